package main

// Per-type behaviour. Defaulting and validation of the built-in types live
// in k8s.io/kubernetes, which cannot be used as a library, so this file
// re-implements the part that clients of this project can notice: the
// defaults they read back (replicas, grace periods, ...) and the 422
// answers to obviously invalid objects. It is deliberately not complete.

import (
	"fmt"
	"reflect"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/utils/ptr"
)

// ---- defaults (registered on the scheme: applied to every decoded body) ----

func defaultPodSpec(s *corev1.PodSpec) {
	if s.RestartPolicy == "" {
		s.RestartPolicy = corev1.RestartPolicyAlways
	}
	if s.TerminationGracePeriodSeconds == nil {
		s.TerminationGracePeriodSeconds = ptr.To[int64](corev1.DefaultTerminationGracePeriodSeconds)
	}
	if s.DNSPolicy == "" {
		s.DNSPolicy = corev1.DNSClusterFirst
	}
	if s.SchedulerName == "" {
		s.SchedulerName = corev1.DefaultSchedulerName
	}
	if s.SecurityContext == nil {
		s.SecurityContext = &corev1.PodSecurityContext{}
	}
	for i := range s.Containers {
		defaultContainer(&s.Containers[i])
	}
	for i := range s.InitContainers {
		defaultContainer(&s.InitContainers[i])
	}
}

func defaultContainer(c *corev1.Container) {
	if c.TerminationMessagePath == "" {
		c.TerminationMessagePath = corev1.TerminationMessagePathDefault
	}
	if c.TerminationMessagePolicy == "" {
		c.TerminationMessagePolicy = corev1.TerminationMessageReadFile
	}
	if c.ImagePullPolicy == "" {
		c.ImagePullPolicy = corev1.PullIfNotPresent
	}
	for i := range c.Ports {
		if c.Ports[i].Protocol == "" {
			c.Ports[i].Protocol = corev1.ProtocolTCP
		}
	}
}

func defaultPod(o interface{}) { defaultPodSpec(&o.(*corev1.Pod).Spec) }

func defaultDeployment(o interface{}) {
	d := o.(*appsv1.Deployment)
	if d.Spec.Replicas == nil {
		d.Spec.Replicas = ptr.To[int32](1)
	}
	if d.Spec.Strategy.Type == "" {
		d.Spec.Strategy.Type = appsv1.RollingUpdateDeploymentStrategyType
	}
	if d.Spec.Strategy.Type == appsv1.RollingUpdateDeploymentStrategyType {
		if d.Spec.Strategy.RollingUpdate == nil {
			d.Spec.Strategy.RollingUpdate = &appsv1.RollingUpdateDeployment{}
		}
		ru := d.Spec.Strategy.RollingUpdate
		if ru.MaxUnavailable == nil {
			ru.MaxUnavailable = ptr.To(intstr.FromString("25%"))
		}
		if ru.MaxSurge == nil {
			ru.MaxSurge = ptr.To(intstr.FromString("25%"))
		}
	}
	if d.Spec.RevisionHistoryLimit == nil {
		d.Spec.RevisionHistoryLimit = ptr.To[int32](10)
	}
	if d.Spec.ProgressDeadlineSeconds == nil {
		d.Spec.ProgressDeadlineSeconds = ptr.To[int32](600)
	}
	defaultPodSpec(&d.Spec.Template.Spec)
}

func defaultStatefulSet(o interface{}) {
	s := o.(*appsv1.StatefulSet)
	if s.Spec.Replicas == nil {
		s.Spec.Replicas = ptr.To[int32](1)
	}
	if s.Spec.PodManagementPolicy == "" {
		s.Spec.PodManagementPolicy = appsv1.OrderedReadyPodManagement
	}
	if s.Spec.UpdateStrategy.Type == "" {
		s.Spec.UpdateStrategy.Type = appsv1.RollingUpdateStatefulSetStrategyType
	}
	if s.Spec.UpdateStrategy.Type == appsv1.RollingUpdateStatefulSetStrategyType {
		if s.Spec.UpdateStrategy.RollingUpdate == nil {
			s.Spec.UpdateStrategy.RollingUpdate = &appsv1.RollingUpdateStatefulSetStrategy{}
		}
		if s.Spec.UpdateStrategy.RollingUpdate.Partition == nil {
			s.Spec.UpdateStrategy.RollingUpdate.Partition = ptr.To[int32](0)
		}
	}
	if s.Spec.RevisionHistoryLimit == nil {
		s.Spec.RevisionHistoryLimit = ptr.To[int32](10)
	}
	if s.Spec.PersistentVolumeClaimRetentionPolicy == nil {
		s.Spec.PersistentVolumeClaimRetentionPolicy = &appsv1.StatefulSetPersistentVolumeClaimRetentionPolicy{
			WhenDeleted: appsv1.RetainPersistentVolumeClaimRetentionPolicyType,
			WhenScaled:  appsv1.RetainPersistentVolumeClaimRetentionPolicyType,
		}
	}
	defaultPodSpec(&s.Spec.Template.Spec)
}

func defaultReplicaSet(o interface{}) {
	r := o.(*appsv1.ReplicaSet)
	if r.Spec.Replicas == nil {
		r.Spec.Replicas = ptr.To[int32](1)
	}
	defaultPodSpec(&r.Spec.Template.Spec)
}

func defaultService(o interface{}) {
	s := o.(*corev1.Service)
	if s.Spec.Type == "" {
		s.Spec.Type = corev1.ServiceTypeClusterIP
	}
	if s.Spec.SessionAffinity == "" {
		s.Spec.SessionAffinity = corev1.ServiceAffinityNone
	}
	for i := range s.Spec.Ports {
		p := &s.Spec.Ports[i]
		if p.Protocol == "" {
			p.Protocol = corev1.ProtocolTCP
		}
		if p.TargetPort == (intstr.IntOrString{}) {
			p.TargetPort = intstr.FromInt32(p.Port)
		}
	}
}

func defaultSecret(o interface{}) {
	s := o.(*corev1.Secret)
	if s.Type == "" {
		s.Type = corev1.SecretTypeOpaque
	}
}

// ---- initial status ----

func namespaceOnCreate(o runtime.Object) {
	o.(*corev1.Namespace).Status.Phase = corev1.NamespaceActive
}

func podOnCreate(o runtime.Object) {
	p := o.(*corev1.Pod)
	p.Status = corev1.PodStatus{Phase: corev1.PodPending, QOSClass: corev1.PodQOSBestEffort}
}

// ---- graceful deletion (pods) ----

// podGracefulDelete mirrors kube-apiserver: the grace period comes from the
// request, else the pod's terminationGracePeriodSeconds; a pod that never
// ran on a node (spec.nodeName empty) or has finished goes at once.
func podGracefulDelete(o runtime.Object, options *metav1.DeleteOptions) bool {
	if options == nil {
		return false
	}
	pod := o.(*corev1.Pod)
	period := int64(corev1.DefaultTerminationGracePeriodSeconds)
	switch {
	case options.GracePeriodSeconds != nil:
		period = *options.GracePeriodSeconds
	case pod.Spec.TerminationGracePeriodSeconds != nil:
		period = *pod.Spec.TerminationGracePeriodSeconds
	}
	if pod.Spec.NodeName == "" || pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded {
		period = 0
	}
	options.GracePeriodSeconds = &period
	return true
}

// ---- extra field selectors ----

func podFields(o runtime.Object) fields.Set {
	p := o.(*corev1.Pod)
	return fields.Set{
		"spec.nodeName":            p.Spec.NodeName,
		"spec.restartPolicy":       string(p.Spec.RestartPolicy),
		"spec.schedulerName":       p.Spec.SchedulerName,
		"spec.serviceAccountName":  p.Spec.ServiceAccountName,
		"status.phase":             string(p.Status.Phase),
		"status.podIP":             p.Status.PodIP,
		"status.nominatedNodeName": p.Status.NominatedNodeName,
	}
}

func namespaceFields(o runtime.Object) fields.Set {
	return fields.Set{"status.phase": string(o.(*corev1.Namespace).Status.Phase)}
}

func coreEventFields(o runtime.Object) fields.Set {
	e := o.(*corev1.Event)
	return fields.Set{
		"involvedObject.kind":            e.InvolvedObject.Kind,
		"involvedObject.namespace":       e.InvolvedObject.Namespace,
		"involvedObject.name":            e.InvolvedObject.Name,
		"involvedObject.uid":             string(e.InvolvedObject.UID),
		"involvedObject.apiVersion":      e.InvolvedObject.APIVersion,
		"involvedObject.resourceVersion": e.InvolvedObject.ResourceVersion,
		"involvedObject.fieldPath":       e.InvolvedObject.FieldPath,
		"reason":                         e.Reason,
		"reportingComponent":             e.ReportingController,
		"source":                         e.Source.Component,
		"type":                           e.Type,
	}
}

// ---- validation ----

func validatePodSpec(s *corev1.PodSpec, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if len(s.Containers) == 0 {
		errs = append(errs, field.Required(p.Child("containers"), ""))
	}
	seen := sets.New[string]()
	check := func(cs []corev1.Container, cp *field.Path) {
		for i, c := range cs {
			idx := cp.Index(i)
			if c.Name == "" {
				errs = append(errs, field.Required(idx.Child("name"), ""))
			} else {
				for _, msg := range validation.IsDNS1123Label(c.Name) {
					errs = append(errs, field.Invalid(idx.Child("name"), c.Name, msg))
				}
				if seen.Has(c.Name) {
					errs = append(errs, field.Duplicate(idx.Child("name"), c.Name))
				}
				seen.Insert(c.Name)
			}
			if c.Image == "" {
				errs = append(errs, field.Required(idx.Child("image"), ""))
			}
			for j, port := range c.Ports {
				for _, msg := range validation.IsValidPortNum(int(port.ContainerPort)) {
					errs = append(errs, field.Invalid(idx.Child("ports").Index(j).Child("containerPort"), port.ContainerPort, msg))
				}
			}
		}
	}
	check(s.InitContainers, p.Child("initContainers"))
	check(s.Containers, p.Child("containers"))
	switch s.RestartPolicy {
	case corev1.RestartPolicyAlways, corev1.RestartPolicyOnFailure, corev1.RestartPolicyNever, "":
	default:
		errs = append(errs, field.NotSupported(p.Child("restartPolicy"), s.RestartPolicy,
			[]string{string(corev1.RestartPolicyAlways), string(corev1.RestartPolicyOnFailure), string(corev1.RestartPolicyNever)}))
	}
	if s.TerminationGracePeriodSeconds != nil && *s.TerminationGracePeriodSeconds < 0 {
		errs = append(errs, field.Invalid(p.Child("terminationGracePeriodSeconds"), *s.TerminationGracePeriodSeconds, "must be greater than or equal to 0"))
	}
	return errs
}

func validatePod(o runtime.Object) field.ErrorList {
	return validatePodSpec(&o.(*corev1.Pod).Spec, field.NewPath("spec"))
}

// validatePodUpdate: a pod's spec is immutable except for the fields
// kube-apiserver lets change (images, activeDeadlineSeconds, tolerations,
// and the grace period).
func validatePodUpdate(o, old runtime.Object) field.ErrorList {
	newPod, oldPod := o.(*corev1.Pod), old.(*corev1.Pod)
	mungedNew := newPod.Spec.DeepCopy()
	if len(mungedNew.Containers) == len(oldPod.Spec.Containers) {
		for i := range mungedNew.Containers {
			mungedNew.Containers[i].Image = oldPod.Spec.Containers[i].Image
		}
	}
	if len(mungedNew.InitContainers) == len(oldPod.Spec.InitContainers) {
		for i := range mungedNew.InitContainers {
			mungedNew.InitContainers[i].Image = oldPod.Spec.InitContainers[i].Image
		}
	}
	mungedNew.ActiveDeadlineSeconds = oldPod.Spec.ActiveDeadlineSeconds
	mungedNew.Tolerations = oldPod.Spec.Tolerations
	mungedNew.TerminationGracePeriodSeconds = oldPod.Spec.TerminationGracePeriodSeconds
	if !apiequality.Semantic.DeepEqual(*mungedNew, oldPod.Spec) {
		return field.ErrorList{field.Forbidden(field.NewPath("spec"),
			"pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations), `spec.terminationGracePeriodSeconds`")}
	}
	return nil
}

// validateWorkload covers what Deployments, StatefulSets and ReplicaSets share.
func validateWorkload(kind string, replicas *int32, selector *metav1.LabelSelector, tmpl *corev1.PodTemplateSpec) field.ErrorList {
	var errs field.ErrorList
	spec := field.NewPath("spec")
	if replicas != nil && *replicas < 0 {
		errs = append(errs, field.Invalid(spec.Child("replicas"), *replicas, "must be greater than or equal to 0"))
	}
	if selector == nil {
		errs = append(errs, field.Required(spec.Child("selector"), ""))
	} else {
		errs = append(errs, metav1validation.ValidateLabelSelector(selector, metav1validation.LabelSelectorValidationOptions{}, spec.Child("selector"))...)
		if len(selector.MatchLabels)+len(selector.MatchExpressions) == 0 {
			errs = append(errs, field.Invalid(spec.Child("selector"), selector, "empty selector is invalid for "+kind))
		}
		if sel, err := metav1.LabelSelectorAsSelector(selector); err == nil && !sel.Empty() && !sel.Matches(labels.Set(tmpl.Labels)) {
			errs = append(errs, field.Invalid(spec.Child("template", "metadata", "labels"), tmpl.Labels, "`selector` does not match template `labels`"))
		}
	}
	errs = append(errs, metav1validation.ValidateLabels(tmpl.Labels, spec.Child("template", "metadata", "labels"))...)
	errs = append(errs, validatePodSpec(&tmpl.Spec, spec.Child("template", "spec"))...)
	return errs
}

func validateDeployment(o runtime.Object) field.ErrorList {
	d := o.(*appsv1.Deployment)
	return validateWorkload("deployment", d.Spec.Replicas, d.Spec.Selector, &d.Spec.Template)
}

func validateReplicaSet(o runtime.Object) field.ErrorList {
	r := o.(*appsv1.ReplicaSet)
	return validateWorkload("replicaset", r.Spec.Replicas, r.Spec.Selector, &r.Spec.Template)
}

func validateStatefulSet(o runtime.Object) field.ErrorList {
	s := o.(*appsv1.StatefulSet)
	errs := validateWorkload("statefulset", s.Spec.Replicas, s.Spec.Selector, &s.Spec.Template)
	switch s.Spec.PodManagementPolicy {
	case appsv1.OrderedReadyPodManagement, appsv1.ParallelPodManagement, "":
	default:
		errs = append(errs, field.NotSupported(field.NewPath("spec", "podManagementPolicy"), s.Spec.PodManagementPolicy,
			[]string{string(appsv1.OrderedReadyPodManagement), string(appsv1.ParallelPodManagement)}))
	}
	return errs
}

// selectorOf returns spec.selector of an apps/v1 workload.
func selectorOf(o runtime.Object) *metav1.LabelSelector {
	return reflect.ValueOf(o).Elem().FieldByName("Spec").FieldByName("Selector").Interface().(*metav1.LabelSelector)
}

func validateSelectorImmutable(o, old runtime.Object) field.ErrorList {
	return apivalidation.ValidateImmutableField(selectorOf(o), selectorOf(old), field.NewPath("spec", "selector"))
}

// validateStatefulSetUpdate: as in kube-apiserver, only some spec fields of a
// StatefulSet may change.
func validateStatefulSetUpdate(o, old runtime.Object) field.ErrorList {
	newSts, oldSts := o.(*appsv1.StatefulSet), old.(*appsv1.StatefulSet)
	munged := newSts.Spec.DeepCopy()
	munged.Replicas = oldSts.Spec.Replicas
	munged.Ordinals = oldSts.Spec.Ordinals
	munged.Template = oldSts.Spec.Template
	munged.UpdateStrategy = oldSts.Spec.UpdateStrategy
	munged.PersistentVolumeClaimRetentionPolicy = oldSts.Spec.PersistentVolumeClaimRetentionPolicy
	munged.MinReadySeconds = oldSts.Spec.MinReadySeconds
	munged.RevisionHistoryLimit = oldSts.Spec.RevisionHistoryLimit
	if !apiequality.Semantic.DeepEqual(*munged, oldSts.Spec) {
		return field.ErrorList{field.Forbidden(field.NewPath("spec"),
			"updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden")}
	}
	return nil
}

func validateLease(o runtime.Object) field.ErrorList {
	l := o.(*coordinationv1.Lease)
	var errs field.ErrorList
	spec := field.NewPath("spec")
	if d := l.Spec.LeaseDurationSeconds; d != nil && *d <= 0 {
		errs = append(errs, field.Invalid(spec.Child("leaseDurationSeconds"), *d, "must be greater than 0"))
	}
	if t := l.Spec.LeaseTransitions; t != nil && *t < 0 {
		errs = append(errs, field.Invalid(spec.Child("leaseTransitions"), *t, "must be greater than or equal to 0"))
	}
	return errs
}

func validateConfigMap(o runtime.Object) field.ErrorList {
	cm := o.(*corev1.ConfigMap)
	var errs field.ErrorList
	for k := range cm.Data {
		for _, msg := range validation.IsConfigMapKey(k) {
			errs = append(errs, field.Invalid(field.NewPath("data").Key(k), k, msg))
		}
	}
	for k := range cm.BinaryData {
		for _, msg := range validation.IsConfigMapKey(k) {
			errs = append(errs, field.Invalid(field.NewPath("binaryData").Key(k), k, msg))
		}
		if _, dup := cm.Data[k]; dup {
			errs = append(errs, field.Invalid(field.NewPath("binaryData").Key(k), k, "duplicate of key present in data"))
		}
	}
	return errs
}

func validateService(o runtime.Object) field.ErrorList {
	s := o.(*corev1.Service)
	var errs field.ErrorList
	ports := field.NewPath("spec", "ports")
	if len(s.Spec.Ports) == 0 && s.Spec.ClusterIP != corev1.ClusterIPNone && s.Spec.Type != corev1.ServiceTypeExternalName {
		errs = append(errs, field.Required(ports, ""))
	}
	for i, p := range s.Spec.Ports {
		for _, msg := range validation.IsValidPortNum(int(p.Port)) {
			errs = append(errs, field.Invalid(ports.Index(i).Child("port"), p.Port, msg))
		}
		if len(s.Spec.Ports) > 1 && p.Name == "" {
			errs = append(errs, field.Required(ports.Index(i).Child("name"), "required when more than one port is defined"))
		}
	}
	return errs
}

func validatePDB(o runtime.Object) field.ErrorList {
	p := o.(*policyv1.PodDisruptionBudget)
	if p.Spec.MinAvailable != nil && p.Spec.MaxUnavailable != nil {
		return field.ErrorList{field.Invalid(field.NewPath("spec"), p.Spec, "minAvailable and maxUnavailable cannot be both set")}
	}
	return nil
}

func validateRules(rules []rbacv1.PolicyRule, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	for i, r := range rules {
		if len(r.Verbs) == 0 {
			errs = append(errs, field.Required(p.Index(i).Child("verbs"), "verbs must contain at least one value"))
		}
		if len(r.NonResourceURLs) == 0 && len(r.Resources) == 0 {
			errs = append(errs, field.Required(p.Index(i).Child("resources"), "resource rules must supply at least one resource"))
		}
	}
	return errs
}

func validateRoleRef(ref rbacv1.RoleRef, namespaced bool) field.ErrorList {
	p := field.NewPath("roleRef")
	var errs field.ErrorList
	if ref.APIGroup != rbacv1.GroupName {
		errs = append(errs, field.NotSupported(p.Child("apiGroup"), ref.APIGroup, []string{rbacv1.GroupName}))
	}
	allowed := []string{"ClusterRole"}
	if namespaced {
		allowed = append(allowed, "Role")
	}
	if !sets.New(allowed...).Has(ref.Kind) {
		errs = append(errs, field.NotSupported(p.Child("kind"), ref.Kind, allowed))
	}
	if ref.Name == "" {
		errs = append(errs, field.Required(p.Child("name"), ""))
	}
	return errs
}

func validateRBAC(o runtime.Object) field.ErrorList {
	switch v := o.(type) {
	case *rbacv1.Role:
		return validateRules(v.Rules, field.NewPath("rules"))
	case *rbacv1.ClusterRole:
		return validateRules(v.Rules, field.NewPath("rules"))
	case *rbacv1.RoleBinding:
		return validateRoleRef(v.RoleRef, true)
	case *rbacv1.ClusterRoleBinding:
		return validateRoleRef(v.RoleRef, false)
	}
	return field.ErrorList{field.InternalError(nil, fmt.Errorf("unexpected %T", o))}
}

func validateRoleRefImmutable(o, old runtime.Object) field.ErrorList {
	ref := func(o runtime.Object) rbacv1.RoleRef {
		return reflect.ValueOf(o).Elem().FieldByName("RoleRef").Interface().(rbacv1.RoleRef)
	}
	if ref(o) != ref(old) {
		return field.ErrorList{field.Invalid(field.NewPath("roleRef"), ref(o), "cannot change roleRef")}
	}
	return nil
}
