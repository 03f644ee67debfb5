package main

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/api/validation/path"
	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/generic"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/names"
	"k8s.io/klog/v2"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"
)

// resource describes one served resource. Behaviour that kube-apiserver
// implements per type (defaults, validation, graceful deletion, extra field
// selectors) is plugged in here; everything else is the generic registry.
type resource struct {
	gv         schema.GroupVersion
	plural     string
	kind       string
	namespaced bool
	shortNames []string
	categories []string
	newObj     func() runtime.Object
	newList    func() runtime.Object

	nameFn   apivalidation.ValidateNameFunc // defaults to DNS subdomain names
	status   bool                           // has spec/status and a /status subresource
	scale    *scaleAccess                   // has a /scale subresource
	defaults func(obj interface{})          // registered as the scheme's defaulter
	onCreate func(obj runtime.Object)       // initial status, as the real strategies set it
	validate func(obj runtime.Object) field.ErrorList
	// validateUpdate adds the rules that only apply to updates (immutable fields).
	validateUpdate func(obj, old runtime.Object) field.ErrorList
	graceful       func(obj runtime.Object, options *metav1.DeleteOptions) bool
	fields         func(obj runtime.Object) fields.Set // extra field selectors
	ttl            time.Duration                       // objects expire (events)
}

var (
	core   = corev1.SchemeGroupVersion
	apps   = appsv1.SchemeGroupVersion
	coord  = coordinationv1.SchemeGroupVersion
	policy = policyv1.SchemeGroupVersion
	rbac   = rbacv1.SchemeGroupVersion
	events = eventsv1.SchemeGroupVersion
)

func newOf[T any, PT interface {
	*T
	runtime.Object
}]() func() runtime.Object {
	return func() runtime.Object { return PT(new(T)) }
}

// resources is everything this server serves.
var resources = []*resource{
	{gv: core, plural: "namespaces", kind: "Namespace", shortNames: []string{"ns"},
		newObj: newOf[corev1.Namespace](), newList: newOf[corev1.NamespaceList](),
		nameFn: apivalidation.NameIsDNSLabel, status: true, onCreate: namespaceOnCreate,
		fields: namespaceFields},
	{gv: core, plural: "pods", kind: "Pod", namespaced: true, shortNames: []string{"po"}, categories: []string{"all"},
		newObj: newOf[corev1.Pod](), newList: newOf[corev1.PodList](),
		status: true, defaults: defaultPod, onCreate: podOnCreate, validate: validatePod,
		validateUpdate: validatePodUpdate, graceful: podGracefulDelete, fields: podFields},
	{gv: core, plural: "configmaps", kind: "ConfigMap", namespaced: true, shortNames: []string{"cm"},
		newObj: newOf[corev1.ConfigMap](), newList: newOf[corev1.ConfigMapList](), validate: validateConfigMap},
	{gv: core, plural: "secrets", kind: "Secret", namespaced: true,
		newObj: newOf[corev1.Secret](), newList: newOf[corev1.SecretList](), defaults: defaultSecret},
	{gv: core, plural: "services", kind: "Service", namespaced: true, shortNames: []string{"svc"}, categories: []string{"all"},
		newObj: newOf[corev1.Service](), newList: newOf[corev1.ServiceList](),
		nameFn: apivalidation.NameIsDNS1035Label, status: true, defaults: defaultService, validate: validateService},
	{gv: core, plural: "serviceaccounts", kind: "ServiceAccount", namespaced: true, shortNames: []string{"sa"},
		newObj: newOf[corev1.ServiceAccount](), newList: newOf[corev1.ServiceAccountList]()},
	{gv: core, plural: "events", kind: "Event", namespaced: true, shortNames: []string{"ev"},
		newObj: newOf[corev1.Event](), newList: newOf[corev1.EventList](), ttl: time.Hour, fields: coreEventFields},
	{gv: core, plural: "nodes", kind: "Node", shortNames: []string{"no"},
		newObj: newOf[corev1.Node](), newList: newOf[corev1.NodeList](), status: true},

	{gv: apps, plural: "deployments", kind: "Deployment", namespaced: true, shortNames: []string{"deploy"}, categories: []string{"all"},
		newObj: newOf[appsv1.Deployment](), newList: newOf[appsv1.DeploymentList](),
		status: true, scale: deploymentScale, defaults: defaultDeployment,
		validate: validateDeployment, validateUpdate: validateSelectorImmutable},
	{gv: apps, plural: "statefulsets", kind: "StatefulSet", namespaced: true, shortNames: []string{"sts"}, categories: []string{"all"},
		newObj: newOf[appsv1.StatefulSet](), newList: newOf[appsv1.StatefulSetList](),
		status: true, scale: statefulSetScale, defaults: defaultStatefulSet,
		validate: validateStatefulSet, validateUpdate: validateStatefulSetUpdate},
	{gv: apps, plural: "replicasets", kind: "ReplicaSet", namespaced: true, shortNames: []string{"rs"}, categories: []string{"all"},
		newObj: newOf[appsv1.ReplicaSet](), newList: newOf[appsv1.ReplicaSetList](),
		status: true, scale: replicaSetScale, defaults: defaultReplicaSet,
		validate: validateReplicaSet, validateUpdate: validateSelectorImmutable},
	{gv: apps, plural: "controllerrevisions", kind: "ControllerRevision", namespaced: true,
		newObj: newOf[appsv1.ControllerRevision](), newList: newOf[appsv1.ControllerRevisionList]()},

	{gv: coord, plural: "leases", kind: "Lease", namespaced: true,
		newObj: newOf[coordinationv1.Lease](), newList: newOf[coordinationv1.LeaseList](), validate: validateLease},

	{gv: policy, plural: "poddisruptionbudgets", kind: "PodDisruptionBudget", namespaced: true, shortNames: []string{"pdb"},
		newObj: newOf[policyv1.PodDisruptionBudget](), newList: newOf[policyv1.PodDisruptionBudgetList](),
		status: true, validate: validatePDB},

	{gv: rbac, plural: "roles", kind: "Role", namespaced: true,
		newObj: newOf[rbacv1.Role](), newList: newOf[rbacv1.RoleList](), nameFn: path.ValidatePathSegmentName, validate: validateRBAC},
	{gv: rbac, plural: "rolebindings", kind: "RoleBinding", namespaced: true,
		newObj: newOf[rbacv1.RoleBinding](), newList: newOf[rbacv1.RoleBindingList](), nameFn: path.ValidatePathSegmentName,
		validate: validateRBAC, validateUpdate: validateRoleRefImmutable},
	{gv: rbac, plural: "clusterroles", kind: "ClusterRole",
		newObj: newOf[rbacv1.ClusterRole](), newList: newOf[rbacv1.ClusterRoleList](), nameFn: path.ValidatePathSegmentName, validate: validateRBAC},
	{gv: rbac, plural: "clusterrolebindings", kind: "ClusterRoleBinding",
		newObj: newOf[rbacv1.ClusterRoleBinding](), newList: newOf[rbacv1.ClusterRoleBindingList](), nameFn: path.ValidatePathSegmentName,
		validate: validateRBAC, validateUpdate: validateRoleRefImmutable},

	{gv: events, plural: "events", kind: "Event", namespaced: true, shortNames: []string{"ev"},
		newObj: newOf[eventsv1.Event](), newList: newOf[eventsv1.EventList](), ttl: time.Hour},
}

// registry keeps the stores the server-wide pieces need.
type registry struct {
	namespaces *genericregistry.Store
	// namespaced holds every namespaced store, for deleting a namespace's content.
	namespaced []*genericregistry.Store
}

// installAPIs builds a store per resource and installs the API groups.
func installAPIs(server *genericapiserver.GenericAPIServer, optsGetter generic.RESTOptionsGetter) (*registry, error) {
	reg := &registry{}
	groups := map[string]*genericapiserver.APIGroupInfo{}
	var order []string
	for _, r := range resources {
		info := groups[r.gv.Group]
		if info == nil {
			gi := genericapiserver.NewDefaultAPIGroupInfo(r.gv.Group, Scheme, ParameterCodec, Codecs)
			gi.PrioritizedVersions = []schema.GroupVersion{r.gv}
			info, groups[r.gv.Group] = &gi, &gi
			order = append(order, r.gv.Group)
		}
		storages, err := newStorages(r, optsGetter, reg)
		if err != nil {
			return nil, fmt.Errorf("storage for %s: %w", r.plural, err)
		}
		if info.VersionedResourcesStorageMap[r.gv.Version] == nil {
			info.VersionedResourcesStorageMap[r.gv.Version] = map[string]rest.Storage{}
		}
		for p, s := range storages {
			info.VersionedResourcesStorageMap[r.gv.Version][p] = s
		}
	}
	if err := server.InstallLegacyAPIGroup(genericapiserver.DefaultLegacyAPIPrefix, groups[""]); err != nil {
		return nil, fmt.Errorf("installing /api: %w", err)
	}
	var named []*genericapiserver.APIGroupInfo
	for _, g := range order {
		if g != "" {
			named = append(named, groups[g])
		}
	}
	if err := server.InstallAPIGroups(named...); err != nil {
		return nil, fmt.Errorf("installing /apis: %w", err)
	}
	return reg, nil
}

// newStorages returns the resource's REST storage and its subresources,
// keyed by path ("pods", "pods/status", ...).
func newStorages(r *resource, optsGetter generic.RESTOptionsGetter, reg *registry) (map[string]rest.Storage, error) {
	strat := &strategy{ObjectTyper: Scheme, NameGenerator: names.SimpleNameGenerator, r: r}
	store := &genericregistry.Store{
		NewFunc:                   r.newObj,
		NewListFunc:               r.newList,
		DefaultQualifiedResource:  r.gv.WithResource(r.plural).GroupResource(),
		SingularQualifiedResource: r.gv.WithResource(strings.ToLower(r.kind)).GroupResource(),
		CreateStrategy:            strat,
		UpdateStrategy:            strat,
		DeleteStrategy:            strat,
		ResetFieldsStrategy:       strat,
		TableConvertor:            rest.NewDefaultTableConvertor(r.gv.WithResource(r.plural).GroupResource()),
	}
	if r.ttl > 0 {
		ttl := uint64(r.ttl.Seconds())
		store.TTLFunc = func(runtime.Object, uint64, bool) (uint64, error) { return ttl, nil }
	}
	opts := &generic.StoreOptions{RESTOptions: optsGetter, AttrFunc: attrFunc(r)}
	if err := store.CompleteWithOptions(opts); err != nil {
		return nil, err
	}
	out := map[string]rest.Storage{r.plural: &mainREST{Store: store, r: r}}
	if r.status {
		statusStore := *store
		statusStrat := &strategy{ObjectTyper: Scheme, NameGenerator: names.SimpleNameGenerator, r: r, forStatus: true}
		statusStore.CreateStrategy = nil
		statusStore.DeleteStrategy = nil
		statusStore.UpdateStrategy = statusStrat
		statusStore.ResetFieldsStrategy = statusStrat
		out[r.plural+"/status"] = &statusREST{store: &statusStore}
	}
	if r.scale != nil {
		out[r.plural+"/scale"] = &scaleREST{store: store, access: r.scale, parent: r.gv.WithResource(r.plural).GroupResource()}
	}
	switch r.plural {
	case "pods":
		if r.gv == core {
			out["pods/binding"] = &bindingREST{store: store}
		}
	case "namespaces":
		reg.namespaces = store
		store.AfterDelete = reg.deleteNamespaceContent
	}
	if r.namespaced {
		reg.namespaced = append(reg.namespaced, store)
	}
	return out, nil
}

func attrFunc(r *resource) storage.AttrFunc {
	return func(obj runtime.Object) (labels.Set, fields.Set, error) {
		m, err := meta.Accessor(obj)
		if err != nil {
			return nil, nil, err
		}
		fs := fields.Set{"metadata.name": m.GetName()}
		if r.namespaced {
			fs["metadata.namespace"] = m.GetNamespace()
		}
		if r.fields != nil {
			for k, v := range r.fields(obj) {
				fs[k] = v
			}
		}
		return labels.Set(m.GetLabels()), fs, nil
	}
}

// mainREST is the resource's own endpoint; it adds what discovery shows.
type mainREST struct {
	*genericregistry.Store
	r *resource
}

func (m *mainREST) ShortNames() []string    { return m.r.shortNames }
func (m *mainREST) Categories() []string    { return m.r.categories }
func (m *mainREST) GetSingularName() string { return strings.ToLower(m.r.kind) }

// statusREST serves /status: get, update and patch, nothing else.
type statusREST struct{ store *genericregistry.Store }

func (s *statusREST) New() runtime.Object { return s.store.NewFunc() }
func (s *statusREST) Destroy()            {}
func (s *statusREST) Get(ctx context.Context, name string, options *metav1.GetOptions) (runtime.Object, error) {
	return s.store.Get(ctx, name, options)
}
func (s *statusREST) Update(ctx context.Context, name string, objInfo rest.UpdatedObjectInfo, createValidation rest.ValidateObjectFunc, updateValidation rest.ValidateObjectUpdateFunc, forceAllowCreate bool, options *metav1.UpdateOptions) (runtime.Object, bool, error) {
	// Subresources never create their parent.
	return s.store.Update(ctx, name, objInfo, createValidation, updateValidation, false, options)
}
func (s *statusREST) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	return s.store.GetResetFields()
}

// strategy is the create/update/delete behaviour of one resource. For
// resources with a status, the main endpoint ignores status changes and the
// /status endpoint ignores everything but status, as in kube-apiserver.
type strategy struct {
	runtime.ObjectTyper
	names.NameGenerator
	r         *resource
	forStatus bool
}

func (s *strategy) NamespaceScoped() bool { return s.r.namespaced }

func (s *strategy) PrepareForCreate(ctx context.Context, obj runtime.Object) {
	if s.r.status {
		setField(obj, "Status", reflect.Zero(fieldOf(obj, "Status").Type()))
		if s.r.namespaced { // namespaces and nodes have no generation
			m, _ := meta.Accessor(obj)
			m.SetGeneration(1)
		}
	}
	if s.r.onCreate != nil {
		s.r.onCreate(obj)
	}
}

func (s *strategy) PrepareForUpdate(ctx context.Context, obj, old runtime.Object) {
	if !s.r.status {
		return
	}
	newMeta, _ := meta.Accessor(obj)
	oldMeta, _ := meta.Accessor(old)
	if s.forStatus {
		setField(obj, "Spec", fieldOf(old, "Spec"))
		// Like kube-apiserver's status strategies: only status (and
		// managedFields) may change through /status.
		newMeta.SetLabels(oldMeta.GetLabels())
		newMeta.SetAnnotations(oldMeta.GetAnnotations())
		newMeta.SetFinalizers(oldMeta.GetFinalizers())
		newMeta.SetOwnerReferences(oldMeta.GetOwnerReferences())
		newMeta.SetDeletionTimestamp(oldMeta.GetDeletionTimestamp())
		newMeta.SetGeneration(oldMeta.GetGeneration())
		return
	}
	setField(obj, "Status", fieldOf(old, "Status"))
	// metadata.generation counts changes of the desired state; controllers
	// report status.observedGeneration against it.
	gen := oldMeta.GetGeneration()
	if s.r.namespaced && !reflect.DeepEqual(fieldOf(obj, "Spec").Interface(), fieldOf(old, "Spec").Interface()) {
		gen++
	}
	newMeta.SetGeneration(gen)
}

func (s *strategy) Validate(ctx context.Context, obj runtime.Object) field.ErrorList {
	nameFn := s.r.nameFn
	if nameFn == nil {
		nameFn = apivalidation.NameIsDNSSubdomain
	}
	m, err := meta.Accessor(obj)
	if err != nil {
		return field.ErrorList{field.InternalError(field.NewPath("metadata"), err)}
	}
	errs := apivalidation.ValidateObjectMetaAccessor(m, s.r.namespaced, nameFn, field.NewPath("metadata"))
	if s.r.validate != nil {
		errs = append(errs, s.r.validate(obj)...)
	}
	return errs
}

func (s *strategy) ValidateUpdate(ctx context.Context, obj, old runtime.Object) field.ErrorList {
	newMeta, _ := meta.Accessor(obj)
	oldMeta, _ := meta.Accessor(old)
	errs := apivalidation.ValidateObjectMetaAccessorUpdate(newMeta, oldMeta, field.NewPath("metadata"))
	if s.r.validate != nil {
		errs = append(errs, s.r.validate(obj)...)
	}
	if s.r.validateUpdate != nil && !s.forStatus {
		errs = append(errs, s.r.validateUpdate(obj, old)...)
	}
	return errs
}

func (s *strategy) WarningsOnCreate(context.Context, runtime.Object) []string { return nil }
func (s *strategy) WarningsOnUpdate(context.Context, runtime.Object, runtime.Object) []string {
	return nil
}
func (s *strategy) Canonicalize(runtime.Object)    {}
func (s *strategy) AllowCreateOnUpdate() bool      { return false }
func (s *strategy) AllowUnconditionalUpdate() bool { return true }

// GetResetFields tells server-side apply which fields an endpoint discards,
// so appliers are not recorded as owning them.
func (s *strategy) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	if !s.r.status {
		return nil
	}
	reset := "status"
	if s.forStatus {
		reset = "spec"
	}
	return map[fieldpath.APIVersion]*fieldpath.Set{
		fieldpath.APIVersion(s.r.gv.String()): fieldpath.NewSet(fieldpath.MakePathOrDie(reset)),
	}
}

// CheckGracefulDelete makes deletion graceful for resources that have it
// (pods): the object gets a deletionTimestamp and stays until whoever runs
// it deletes it again with grace period 0.
func (s *strategy) CheckGracefulDelete(ctx context.Context, obj runtime.Object, options *metav1.DeleteOptions) bool {
	if s.r.graceful == nil {
		return false
	}
	return s.r.graceful(obj, options)
}

func fieldOf(obj runtime.Object, name string) reflect.Value {
	return reflect.ValueOf(obj).Elem().FieldByName(name)
}

func setField(obj runtime.Object, name string, v reflect.Value) {
	fieldOf(obj, name).Set(v)
}

// ensureNamespaces creates the given namespaces when they do not exist.
func (reg *registry) ensureNamespaces(ctx context.Context, nsNames ...string) error {
	for _, n := range nsNames {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}}
		_, err := reg.namespaces.Create(genericapirequest.WithNamespace(ctx, ""), ns, rest.ValidateAllObjectFunc, &metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating namespace %s: %w", n, err)
		}
	}
	return nil
}

// deleteNamespaceContent stands in for the namespace controller: deleting a
// namespace deletes everything in it right away (there is no Terminating
// phase), so a namespace can be deleted and created again for a fresh start.
func (reg *registry) deleteNamespaceContent(obj runtime.Object, options *metav1.DeleteOptions) {
	if options != nil && len(options.DryRun) > 0 {
		return
	}
	m, err := meta.Accessor(obj)
	if err != nil {
		return
	}
	ctx := genericapirequest.WithNamespace(genericapirequest.NewContext(), m.GetName())
	zero := int64(0)
	for _, st := range reg.namespaced {
		_, err := st.DeleteCollection(ctx, rest.ValidateAllObjectFunc,
			&metav1.DeleteOptions{GracePeriodSeconds: &zero}, &metainternalversion.ListOptions{})
		if err != nil {
			klog.ErrorS(err, "deleting namespace content", "namespace", m.GetName(), "resource", st.DefaultQualifiedResource)
		}
	}
}
