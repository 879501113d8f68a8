// Package v1alpha1 holds the LoadBalancerPair API: a highly available pair of L4 load
// balancers that share virtual IPs elected with VRRP.
//
// +kubebuilder:object:generate=true
// +groupName=lbpair.io
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version of the API.
	GroupVersion = schema.GroupVersion{Group: "lbpair.io", Version: "v1alpha1"}

	// SchemeBuilder registers the API's types with a scheme. It is apimachinery's, so
	// that importing the API does not pull in controller-runtime.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the API's types to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &LoadBalancerPair{}, &LoadBalancerPairList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
