package main

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/storage"
)

// scaleAccess reads and writes the replica fields of a scalable workload.
type scaleAccess struct {
	get func(obj runtime.Object) (spec int32, status int32, selector *metav1.LabelSelector)
	set func(obj runtime.Object, replicas int32)
}

func replicasOrOne(p *int32) int32 {
	if p == nil {
		return 1
	}
	return *p
}

var deploymentScale = &scaleAccess{
	get: func(o runtime.Object) (int32, int32, *metav1.LabelSelector) {
		d := o.(*appsv1.Deployment)
		return replicasOrOne(d.Spec.Replicas), d.Status.Replicas, d.Spec.Selector
	},
	set: func(o runtime.Object, n int32) { o.(*appsv1.Deployment).Spec.Replicas = &n },
}

var statefulSetScale = &scaleAccess{
	get: func(o runtime.Object) (int32, int32, *metav1.LabelSelector) {
		s := o.(*appsv1.StatefulSet)
		return replicasOrOne(s.Spec.Replicas), s.Status.Replicas, s.Spec.Selector
	},
	set: func(o runtime.Object, n int32) { o.(*appsv1.StatefulSet).Spec.Replicas = &n },
}

var replicaSetScale = &scaleAccess{
	get: func(o runtime.Object) (int32, int32, *metav1.LabelSelector) {
		r := o.(*appsv1.ReplicaSet)
		return replicasOrOne(r.Spec.Replicas), r.Status.Replicas, r.Spec.Selector
	},
	set: func(o runtime.Object, n int32) { o.(*appsv1.ReplicaSet).Spec.Replicas = &n },
}

// scaleREST is the /scale subresource: it speaks autoscaling/v1 Scale and
// reads and writes the parent's spec.replicas, as kube-apiserver's does. The
// Scale carries the parent's resourceVersion, so a write with a stale one
// fails with 409 Conflict: compare-and-swap on the replica count.
type scaleREST struct {
	store  *genericregistry.Store
	access *scaleAccess
	parent schema.GroupResource
}

var (
	_ rest.Getter                   = &scaleREST{}
	_ rest.Updater                  = &scaleREST{}
	_ rest.GroupVersionKindProvider = &scaleREST{}
)

func (r *scaleREST) New() runtime.Object { return &autoscalingv1.Scale{} }
func (r *scaleREST) Destroy()            {}

func (r *scaleREST) GroupVersionKind(schema.GroupVersion) schema.GroupVersionKind {
	return autoscalingv1.SchemeGroupVersion.WithKind("Scale")
}

func (r *scaleREST) Get(ctx context.Context, name string, options *metav1.GetOptions) (runtime.Object, error) {
	obj, err := r.store.Get(ctx, name, options)
	if err != nil {
		return nil, err
	}
	return r.toScale(obj)
}

func (r *scaleREST) Update(ctx context.Context, name string, objInfo rest.UpdatedObjectInfo, createValidation rest.ValidateObjectFunc, updateValidation rest.ValidateObjectUpdateFunc, forceAllowCreate bool, options *metav1.UpdateOptions) (runtime.Object, bool, error) {
	obj, _, err := r.store.Update(ctx, name,
		&scaleUpdatedObjectInfo{name: name, reqObjInfo: objInfo, r: r},
		r.scaleCreateValidation(createValidation), r.scaleUpdateValidation(updateValidation),
		false, options)
	if err != nil {
		return nil, false, err
	}
	scale, err := r.toScale(obj)
	return scale, false, err
}

func (r *scaleREST) toScale(obj runtime.Object) (*autoscalingv1.Scale, error) {
	spec, status, sel := r.access.get(obj)
	selector := ""
	if sel != nil {
		s, err := metav1.LabelSelectorAsSelector(sel)
		if err != nil {
			return nil, err
		}
		selector = s.String()
	}
	m, err := metaOf(obj)
	if err != nil {
		return nil, err
	}
	return &autoscalingv1.Scale{
		ObjectMeta: metav1.ObjectMeta{
			Name:              m.Name,
			Namespace:         m.Namespace,
			UID:               m.UID,
			ResourceVersion:   m.ResourceVersion,
			CreationTimestamp: m.CreationTimestamp,
		},
		Spec:   autoscalingv1.ScaleSpec{Replicas: spec},
		Status: autoscalingv1.ScaleStatus{Replicas: status, Selector: selector},
	}, nil
}

// Admission sees the Scale, not the parent, as with kube-apiserver.
func (r *scaleREST) scaleCreateValidation(f rest.ValidateObjectFunc) rest.ValidateObjectFunc {
	return func(ctx context.Context, obj runtime.Object) error {
		scale, err := r.toScale(obj)
		if err != nil {
			return err
		}
		return f(ctx, scale)
	}
}

func (r *scaleREST) scaleUpdateValidation(f rest.ValidateObjectUpdateFunc) rest.ValidateObjectUpdateFunc {
	return func(ctx context.Context, obj, old runtime.Object) error {
		newScale, err := r.toScale(obj)
		if err != nil {
			return err
		}
		oldScale, err := r.toScale(old)
		if err != nil {
			return err
		}
		return f(ctx, newScale, oldScale)
	}
}

// scaleUpdatedObjectInfo turns the client's new Scale (from a PUT or any
// patch, applied to the current Scale) into the updated parent.
type scaleUpdatedObjectInfo struct {
	name       string
	reqObjInfo rest.UpdatedObjectInfo
	r          *scaleREST
}

func (i *scaleUpdatedObjectInfo) Preconditions() *metav1.Preconditions {
	return i.reqObjInfo.Preconditions()
}

func (i *scaleUpdatedObjectInfo) UpdatedObject(ctx context.Context, oldObj runtime.Object) (runtime.Object, error) {
	parent := oldObj.DeepCopyObject()
	oldScale, err := i.r.toScale(parent)
	if err != nil {
		return nil, err
	}
	obj, err := i.reqObjInfo.UpdatedObject(ctx, oldScale)
	if err != nil {
		return nil, err
	}
	if obj == nil {
		return nil, apierrors.NewBadRequest("nil update passed to Scale")
	}
	scale, ok := obj.(*autoscalingv1.Scale)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("expected input object type to be Scale, but %T", obj))
	}
	var errs field.ErrorList
	if scale.Name != i.name {
		errs = append(errs, field.Invalid(field.NewPath("metadata", "name"), scale.Name, "must match the name of the scaled object"))
	}
	if scale.Spec.Replicas < 0 {
		errs = append(errs, field.Invalid(field.NewPath("spec", "replicas"), scale.Spec.Replicas, "must be greater than or equal to 0"))
	}
	if len(errs) > 0 {
		return nil, apierrors.NewInvalid(autoscalingv1.SchemeGroupVersion.WithKind("Scale").GroupKind(), scale.Name, errs)
	}
	i.r.access.set(parent, scale.Spec.Replicas)
	// The Scale's resourceVersion becomes the parent's: the store then
	// refuses the write (409) if the parent changed since it was read.
	// An empty one means an unconditional update.
	m, err := metaOf(parent)
	if err != nil {
		return nil, err
	}
	m.ResourceVersion = scale.ResourceVersion
	return parent, nil
}

func metaOf(obj runtime.Object) (*metav1.ObjectMeta, error) {
	type objectMetaer interface{ GetObjectMeta() metav1.Object }
	o, ok := obj.(objectMetaer)
	if !ok {
		return nil, fmt.Errorf("%T has no ObjectMeta", obj)
	}
	m, ok := o.GetObjectMeta().(*metav1.ObjectMeta)
	if !ok {
		return nil, fmt.Errorf("%T has no ObjectMeta", obj)
	}
	return m, nil
}

// bindingREST is pods/binding, the scheduler's way to assign a pod to a
// node: it sets spec.nodeName once, and refuses a pod that is already bound.
type bindingREST struct{ store *genericregistry.Store }

var _ rest.NamedCreater = &bindingREST{}

func (b *bindingREST) New() runtime.Object { return &corev1.Binding{} }
func (b *bindingREST) Destroy()            {}

func (b *bindingREST) Create(ctx context.Context, name string, obj runtime.Object, createValidation rest.ValidateObjectFunc, options *metav1.CreateOptions) (runtime.Object, error) {
	binding, ok := obj.(*corev1.Binding)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("not a Binding object: %T", obj))
	}
	if name != binding.Name {
		return nil, apierrors.NewBadRequest("name in URL does not match name in Binding object")
	}
	if binding.Target.Kind != "" && binding.Target.Kind != "Node" {
		return nil, apierrors.NewInvalid(corev1.SchemeGroupVersion.WithKind("Binding").GroupKind(), name,
			field.ErrorList{field.NotSupported(field.NewPath("target", "kind"), binding.Target.Kind, []string{"Node", "<empty>"})})
	}
	if binding.Target.Name == "" {
		return nil, apierrors.NewInvalid(corev1.SchemeGroupVersion.WithKind("Binding").GroupKind(), name,
			field.ErrorList{field.Required(field.NewPath("target", "name"), "")})
	}
	if createValidation != nil {
		if err := createValidation(ctx, binding.DeepCopyObject()); err != nil {
			return nil, err
		}
	}
	key, err := b.store.KeyFunc(ctx, name)
	if err != nil {
		return nil, err
	}
	dryRun := options != nil && len(options.DryRun) > 0
	// Straight to storage: the pods strategy would (rightly) refuse a
	// spec.nodeName change and drop the condition in an ordinary update.
	err = b.store.Storage.GuaranteedUpdate(ctx, key, &corev1.Pod{}, false, nil,
		func(input runtime.Object, _ storage.ResponseMeta) (runtime.Object, *uint64, error) {
			pod := input.(*corev1.Pod)
			if pod.DeletionTimestamp != nil {
				return nil, nil, apierrors.NewConflict(corev1.Resource("pods/binding"), name, fmt.Errorf("pod %s is being deleted, cannot be assigned to a host", name))
			}
			if pod.Spec.NodeName != "" {
				return nil, nil, apierrors.NewConflict(corev1.Resource("pods/binding"), name, fmt.Errorf("pod %s is already assigned to node %q", name, pod.Spec.NodeName))
			}
			pod.Spec.NodeName = binding.Target.Name
			if pod.Annotations == nil && len(binding.Annotations) > 0 {
				pod.Annotations = map[string]string{}
			}
			for k, v := range binding.Annotations {
				pod.Annotations[k] = v
			}
			pod.Status.Conditions = append(pod.Status.Conditions, corev1.PodCondition{
				Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now(),
			})
			return pod, nil, nil
		}, dryRun, nil)
	if err != nil {
		if storage.IsNotFound(err) {
			return nil, apierrors.NewNotFound(corev1.Resource("pods"), name)
		}
		return nil, err
	}
	return &metav1.Status{Status: metav1.StatusSuccess, Code: 201}, nil
}
