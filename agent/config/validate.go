package config

import (
	"context"
	"fmt"
	"sync"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	apiservervalidation "k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"sigs.k8s.io/yaml"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
	"github.com/lbpair/lbpair/config/crd"
)

// crdValidation is the apiserver's validation of the embedded CRD's served
// version: its OpenAPI schema and its CEL rules.
type crdValidation struct {
	schema     apiservervalidation.SchemaValidator
	structural *structuralschema.Structural
	cel        *cel.Validator
}

var validation = sync.OnceValues(func() (*crdValidation, error) {
	var def apiextensionsv1.CustomResourceDefinition
	if err := yaml.Unmarshal(crd.LoadBalancerPair, &def); err != nil {
		return nil, fmt.Errorf("reading the embedded CRD: %w", err)
	}
	for _, v := range def.Spec.Versions {
		if v.Name != lbv1.GroupVersion.Version || v.Schema == nil {
			continue
		}
		var props apiextensions.JSONSchemaProps
		if err := apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(v.Schema.OpenAPIV3Schema, &props, nil); err != nil {
			return nil, fmt.Errorf("converting the CRD's schema: %w", err)
		}
		structural, err := structuralschema.NewStructural(&props)
		if err != nil {
			return nil, fmt.Errorf("the CRD's schema is not structural: %w", err)
		}
		schema, _, err := apiservervalidation.NewSchemaValidator(&props)
		if err != nil {
			return nil, fmt.Errorf("compiling the CRD's schema: %w", err)
		}
		return &crdValidation{schema: schema, structural: structural, cel: cel.NewValidator(structural, true, celconfig.PerCallLimit)}, nil
	}
	return nil, fmt.Errorf("the embedded CRD has no schema for version %s", lbv1.GroupVersion.Version)
})

// validate checks a defaulted LoadBalancerPair, as decoded from YAML, as the
// apiserver does on create: the CRD's schema (ranges, patterns, enums,
// lengths, required fields) and its CEL rules. A standalone file gets the
// same refusals, with the same messages, as `kubectl apply` of the pair.
func validate(ctx context.Context, obj map[string]any) error {
	v, err := validation()
	if err != nil {
		return err
	}
	// As the apiserver, the CEL rules only run on an object the schema accepts.
	if errs := apiservervalidation.ValidateCustomResource(nil, obj, v.schema); len(errs) > 0 {
		return errs.ToAggregate()
	}
	errs, _ := v.cel.Validate(ctx, nil, v.structural, obj, nil, celconfig.RuntimeCELCostBudget)
	return errs.ToAggregate()
}
