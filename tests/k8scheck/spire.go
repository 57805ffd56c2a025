package main

// Local mirrors of the SPIRE controller-manager's cluster-scoped CRDs (spire.spiffe.io/v1alpha1,
// as of spire-controller-manager v0.6.4: api/v1alpha1/clusterspiffeid_types.go and
// clusterfederatedtrustdomain_types.go), field for field with the same JSON names, so strict
// decoding rejects what the CRD's structural schema would prune or reject. The upstream Go
// package is not imported: it carries the controller's webhooks and with them controller-runtime,
// client-go, the SPIRE API SDK and gRPC (about 700 packages instead of about 100), pinned to an
// older Kubernetes release than this checker's. validate() adds the schema's required fields,
// enum and pattern, and the checks the controller-manager's admission webhooks make.

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"text/template"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var spireGroupVersion = schema.GroupVersion{Group: "spire.spiffe.io", Version: "v1alpha1"}

func addSpireTypes(scheme *runtime.Scheme) error {
	scheme.AddKnownTypes(spireGroupVersion, &ClusterSPIFFEID{}, &ClusterFederatedTrustDomain{})
	metav1.AddToGroupVersion(scheme, spireGroupVersion)
	return nil
}

// validatable is an object with checks beyond its structure.
type validatable interface {
	validate() []string
}

// ClusterSPIFFEIDSpec mirrors spire.spiffe.io/v1alpha1 ClusterSPIFFEIDSpec.
type ClusterSPIFFEIDSpec struct {
	SPIFFEIDTemplate          string                `json:"spiffeIDTemplate"`
	TTL                       metav1.Duration       `json:"ttl,omitempty"`
	JWTTTL                    metav1.Duration       `json:"jwtTtl,omitempty"`
	DNSNameTemplates          []string              `json:"dnsNameTemplates,omitempty"`
	WorkloadSelectorTemplates []string              `json:"workloadSelectorTemplates,omitempty"`
	FederatesWith             []string              `json:"federatesWith,omitempty"`
	NamespaceSelector         *metav1.LabelSelector `json:"namespaceSelector,omitempty"`
	PodSelector               *metav1.LabelSelector `json:"podSelector,omitempty"`
	Admin                     bool                  `json:"admin,omitempty"`
	Downstream                bool                  `json:"downstream,omitempty"`
	AutoPopulateDNSNames      bool                  `json:"autoPopulateDNSNames,omitempty"`
	ClassName                 string                `json:"className,omitempty"`
	Fallback                  bool                  `json:"fallback,omitempty"`
	Hint                      string                `json:"hint,omitempty"`
}

// ClusterSPIFFEIDStats mirrors the status statistics (written by the controller only).
type ClusterSPIFFEIDStats struct {
	NamespacesSelected     int `json:"namespacesSelected"`
	NamespacesIgnored      int `json:"namespacesIgnored"`
	PodsSelected           int `json:"podsSelected"`
	PodEntryRenderFailures int `json:"podEntryRenderFailures"`
	EntriesMasked          int `json:"entriesMasked"`
	EntriesToSet           int `json:"entriesToSet"`
	EntryFailures          int `json:"entryFailures"`
}

// ClusterSPIFFEIDStatus mirrors ClusterSPIFFEIDStatus.
type ClusterSPIFFEIDStatus struct {
	Stats ClusterSPIFFEIDStats `json:"stats"`
}

// ClusterSPIFFEID mirrors the ClusterSPIFFEID resource.
type ClusterSPIFFEID struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              ClusterSPIFFEIDSpec   `json:"spec,omitempty"`
	Status            ClusterSPIFFEIDStatus `json:"status,omitempty"`
}

// BundleEndpointProfile mirrors the federation profile of a ClusterFederatedTrustDomain.
type BundleEndpointProfile struct {
	Type             string `json:"type"`
	EndpointSPIFFEID string `json:"endpointSPIFFEID,omitempty"`
}

// ClusterFederatedTrustDomainSpec mirrors ClusterFederatedTrustDomainSpec.
type ClusterFederatedTrustDomainSpec struct {
	TrustDomain           string                `json:"trustDomain"`
	BundleEndpointURL     string                `json:"bundleEndpointURL"`
	BundleEndpointProfile BundleEndpointProfile `json:"bundleEndpointProfile"`
	TrustDomainBundle     string                `json:"trustDomainBundle,omitempty"`
	ClassName             string                `json:"className,omitempty"`
}

// ClusterFederatedTrustDomainStatus is empty, as upstream.
type ClusterFederatedTrustDomainStatus struct{}

// ClusterFederatedTrustDomain mirrors the ClusterFederatedTrustDomain resource.
type ClusterFederatedTrustDomain struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              ClusterFederatedTrustDomainSpec   `json:"spec,omitempty"`
	Status            ClusterFederatedTrustDomainStatus `json:"status,omitempty"`
}

// DeepCopyObject implements runtime.Object.
func (in *ClusterSPIFFEID) DeepCopyObject() runtime.Object {
	out := *in
	in.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	s := &out.Spec
	s.DNSNameTemplates = append([]string(nil), in.Spec.DNSNameTemplates...)
	s.WorkloadSelectorTemplates = append([]string(nil), in.Spec.WorkloadSelectorTemplates...)
	s.FederatesWith = append([]string(nil), in.Spec.FederatesWith...)
	s.NamespaceSelector = in.Spec.NamespaceSelector.DeepCopy()
	s.PodSelector = in.Spec.PodSelector.DeepCopy()
	return &out
}

// DeepCopyObject implements runtime.Object.
func (in *ClusterFederatedTrustDomain) DeepCopyObject() runtime.Object {
	out := *in
	in.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	return &out
}

// The CRD's pattern for trust domain names ([a-z0-9._-]{1,255}), anchored as SPIFFE requires.
var trustDomainName = regexp.MustCompile(`^[a-z0-9._-]{1,255}$`)

func (in *ClusterSPIFFEID) validate() []string {
	var problems []string
	s := in.Spec
	if s.SPIFFEIDTemplate == "" {
		problems = append(problems, "spec.spiffeIDTemplate: required")
	}
	templates := map[string]string{"spec.spiffeIDTemplate": s.SPIFFEIDTemplate}
	for i, t := range s.DNSNameTemplates {
		templates[fmt.Sprintf("spec.dnsNameTemplates[%d]", i)] = t
	}
	for i, t := range s.WorkloadSelectorTemplates {
		templates[fmt.Sprintf("spec.workloadSelectorTemplates[%d]", i)] = t
	}
	for field, text := range templates {
		if _, err := template.New(field).Parse(text); err != nil {
			problems = append(problems, fmt.Sprintf("%s: not a valid template: %v", field, err))
		}
	}
	for i, td := range s.FederatesWith {
		if !trustDomainName.MatchString(td) {
			problems = append(problems, fmt.Sprintf("spec.federatesWith[%d]: %q is not a trust domain name", i, td))
		}
	}
	for _, sel := range []*metav1.LabelSelector{s.NamespaceSelector, s.PodSelector} {
		if _, err := metav1.LabelSelectorAsSelector(sel); err != nil {
			problems = append(problems, fmt.Sprintf("label selector: %v", err))
		}
	}
	return problems
}

func (in *ClusterFederatedTrustDomain) validate() []string {
	var problems []string
	s := in.Spec
	if !trustDomainName.MatchString(s.TrustDomain) {
		problems = append(problems, fmt.Sprintf("spec.trustDomain: %q is not a trust domain name", s.TrustDomain))
	}
	if u, err := url.Parse(s.BundleEndpointURL); err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil {
		problems = append(problems, fmt.Sprintf("spec.bundleEndpointURL: %q must be an https URL without userinfo", s.BundleEndpointURL))
	}
	p := s.BundleEndpointProfile
	switch p.Type {
	case "https_spiffe":
		if !strings.HasPrefix(p.EndpointSPIFFEID, "spiffe://") {
			problems = append(problems, "spec.bundleEndpointProfile.endpointSPIFFEID: a SPIFFE ID is required for https_spiffe")
		}
	case "https_web":
		if p.EndpointSPIFFEID != "" {
			problems = append(problems, "spec.bundleEndpointProfile.endpointSPIFFEID: not allowed for https_web")
		}
	default:
		problems = append(problems, fmt.Sprintf("spec.bundleEndpointProfile.type: %q is not one of https_spiffe, https_web", p.Type))
	}
	return problems
}
