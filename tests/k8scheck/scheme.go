package main

import (
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// newScheme registers the API groups manifests of this kind use. A kind outside them is an
// error ("unknown kind"), never skipped: add its group here when a manifest needs it.
func newScheme() (*runtime.Scheme, error) {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, batchv1.AddToScheme, networkingv1.AddToScheme,
		policyv1.AddToScheme, rbacv1.AddToScheme, autoscalingv2.AddToScheme, addSpireTypes,
	} {
		if err := add(scheme); err != nil {
			return nil, err
		}
	}
	return scheme, nil
}

// podSpec is one pod spec found in an object, with the metadata Pod Security reads (the pod
// template's, whose annotations may carry AppArmor profiles).
type podSpec struct {
	meta *metav1.ObjectMeta
	spec *corev1.PodSpec
}

// podSpecsOf returns the pod spec of a pod-bearing object, or none.
func podSpecsOf(obj runtime.Object) []podSpec {
	one := func(meta *metav1.ObjectMeta, spec *corev1.PodSpec) []podSpec {
		return []podSpec{{meta: meta, spec: spec}}
	}
	switch o := obj.(type) {
	case *corev1.Pod:
		return one(&o.ObjectMeta, &o.Spec)
	case *corev1.PodTemplate:
		return one(&o.Template.ObjectMeta, &o.Template.Spec)
	case *corev1.ReplicationController:
		if o.Spec.Template == nil {
			return nil
		}
		return one(&o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec)
	case *appsv1.Deployment:
		return one(&o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec)
	case *appsv1.StatefulSet:
		return one(&o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec)
	case *appsv1.DaemonSet:
		return one(&o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec)
	case *appsv1.ReplicaSet:
		return one(&o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec)
	case *batchv1.Job:
		return one(&o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec)
	case *batchv1.CronJob:
		t := &o.Spec.JobTemplate.Spec.Template
		return one(&t.ObjectMeta, &t.Spec)
	}
	return nil
}
