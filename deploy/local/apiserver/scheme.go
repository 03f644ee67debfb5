package main

import (
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
)

// The generic API server converts every request body to an "internal"
// version (the hub) and stores and serves the external versions. The
// internal Go types of the built-in APIs live in k8s.io/kubernetes, which is
// not a library; but each group here is served in exactly one version, so
// the external k8s.io/api types are registered a second time as that group's
// internal version. runtime.Scheme converts between two registrations of the
// same Go type by only changing apiVersion/kind, which is exactly right.
var (
	Scheme = runtime.NewScheme()
	Codecs = serializer.NewCodecFactory(Scheme)
	// ParameterCodec decodes query parameters (GetOptions, ...) of requests.
	ParameterCodec = runtime.NewParameterCodec(Scheme)

	// externalScheme has only the external registrations; the OpenAPI
	// definition namer reads group/version/kinds from it.
	externalScheme = runtime.NewScheme()
)

var addExternalTypes = []func(*runtime.Scheme) error{
	corev1.AddToScheme,
	appsv1.AddToScheme,
	autoscalingv1.AddToScheme,
	coordinationv1.AddToScheme,
	policyv1.AddToScheme,
	rbacv1.AddToScheme,
	eventsv1.AddToScheme,
}

func init() {
	for _, add := range addExternalTypes {
		utilruntime.Must(add(Scheme))
		utilruntime.Must(add(externalScheme))
	}
	for _, r := range resources {
		addInternal(r.gv.Group, r.newObj(), r.newList())
	}
	// Objects that only travel through subresources.
	addInternal(autoscalingv1.GroupName, &autoscalingv1.Scale{})
	addInternal(corev1.GroupName, &corev1.Binding{})

	// Meta types every generic API server needs, as sample-apiserver does.
	unversioned := schema.GroupVersion{Group: "", Version: "v1"}
	Scheme.AddUnversionedTypes(unversioned,
		&metav1.Status{}, &metav1.APIVersions{}, &metav1.APIGroupList{},
		&metav1.APIGroup{}, &metav1.APIResourceList{})

	for _, r := range resources {
		if r.defaults != nil {
			Scheme.AddTypeDefaultingFunc(r.newObj(), r.defaults)
		}
		if r.fields != nil {
			registerFieldLabels(r)
		}
	}
}

func addInternal(group string, objs ...runtime.Object) {
	Scheme.AddKnownTypes(schema.GroupVersion{Group: group, Version: runtime.APIVersionInternal}, objs...)
}

// registerFieldLabels lets clients use the resource's extra field selectors
// (e.g. pods by spec.nodeName) besides metadata.name/metadata.namespace.
func registerFieldLabels(r *resource) {
	allowed := map[string]bool{"metadata.name": true, "metadata.namespace": true}
	for k := range r.fields(r.newObj()) {
		allowed[k] = true
	}
	utilruntime.Must(Scheme.AddFieldLabelConversionFunc(r.gv.WithKind(r.kind),
		func(label, value string) (string, string, error) {
			if allowed[label] {
				return label, value, nil
			}
			return "", "", fmt.Errorf("field label not supported: %s", label)
		}))
}

func servedGroupVersions() []schema.GroupVersion {
	seen := map[schema.GroupVersion]bool{}
	var gvs []schema.GroupVersion
	for _, r := range resources {
		if !seen[r.gv] {
			seen[r.gv] = true
			gvs = append(gvs, r.gv)
		}
	}
	return gvs
}

// storageCodec writes each object to etcd as JSON in its served version,
// as kube-apiserver does (it prefers protobuf; JSON keeps etcdctl readable).
func storageCodec() runtime.Codec {
	return Codecs.LegacyCodec(servedGroupVersions()...)
}
