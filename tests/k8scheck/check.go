package main

import (
	"fmt"
	"io"
	"regexp"
	"strings"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	psaapi "k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
	"sigs.k8s.io/yaml"
)

// checker decodes documents strictly against its scheme and evaluates pod specs.
type checker struct {
	decoder   runtime.Decoder
	evaluator policy.Evaluator
	level     psaapi.LevelVersion
}

func newChecker(lv psaapi.LevelVersion) (*checker, error) {
	scheme, err := newScheme()
	if err != nil {
		return nil, err
	}
	evaluator, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		return nil, err
	}
	decoder := json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme,
		json.SerializerOptions{Yaml: true, Strict: true})
	return &checker{decoder: decoder, evaluator: evaluator, level: lv}, nil
}

// checkFile checks every document of one file and prints a line per problem.
func (c *checker) checkFile(name string, data []byte, out io.Writer, verbose bool) summary {
	var s summary
	for _, doc := range splitDocuments(data) {
		if isEmpty(doc.data) {
			continue
		}
		s.objects++
		where := fmt.Sprintf("%s: document %d (line %d): %s", name, doc.index, doc.line, describe(doc.data))
		problems, podSpecs := c.checkDocument(doc.data)
		s.podSpecs += podSpecs
		s.problems += len(problems)
		for _, p := range problems {
			fmt.Fprintf(out, "%s: %s\n", where, p)
		}
		if verbose && len(problems) == 0 {
			fmt.Fprintf(out, "%s: ok\n", where)
		}
	}
	return s
}

// checkDocument returns the document's problems and how many pod specs it evaluated.
func (c *checker) checkDocument(data []byte) ([]string, int) {
	obj, _, err := c.decoder.Decode(data, nil, nil)
	var problems []string
	if err != nil {
		problems = decodeProblems(err)
		// A strict decoding error still yields the object: check the rest of it too.
		if _, strict := runtime.AsStrictDecodingError(err); !strict || obj == nil {
			return problems, 0
		}
	}
	if v, ok := obj.(validatable); ok {
		problems = append(problems, v.validate()...)
	}
	pods := podSpecsOf(obj)
	for _, pod := range pods {
		problems = append(problems, c.evaluate(pod)...)
	}
	return problems, len(pods)
}

// evaluate runs the Pod Security checks of the checker's level over one pod spec; one line per
// forbidden check, worded as the admission controller words its rejection.
func (c *checker) evaluate(pod podSpec) []string {
	var problems []string
	for _, r := range c.evaluator.EvaluatePod(c.level, pod.meta, pod.spec) {
		if r.Allowed {
			continue
		}
		line := fmt.Sprintf("violates PodSecurity %q: %s", c.level.String(), r.ForbiddenReason)
		if r.ForbiddenDetail != "" {
			line += " (" + r.ForbiddenDetail + ")"
		}
		problems = append(problems, line)
	}
	return problems
}

// decodeProblems turns a decoding error into lines: one per unknown or duplicate field for a
// strict decoding error, else the error itself.
func decodeProblems(err error) []string {
	if strict, ok := runtime.AsStrictDecodingError(err); ok {
		var lines []string
		for _, e := range strict.Errors() {
			lines = append(lines, "strict decoding error: "+oneLine(e.Error()))
		}
		return lines
	}
	if runtime.IsNotRegisteredError(err) {
		return []string{"unknown kind: " + schemeName.ReplaceAllString(err.Error(), "")}
	}
	if runtime.IsMissingKind(err) || runtime.IsMissingVersion(err) {
		return []string{"apiVersion and kind are required"}
	}
	return []string{"cannot decode: " + oneLine(err.Error())}
}

var (
	schemeName = regexp.MustCompile(` in scheme "[^"]*"`)
	lineBreaks = regexp.MustCompile(`\s*\n\s*`)
)

// oneLine joins a multi-line message (yaml's "unmarshal errors:\n  line 9: ...") into one line.
func oneLine(s string) string {
	return lineBreaks.ReplaceAllString(strings.TrimSpace(s), " ")
}

// describe names a document as KIND/NAME from a lenient read, for the start of its lines.
func describe(data []byte) string {
	var head struct {
		Kind     string `json:"kind"`
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := yaml.Unmarshal(data, &head); err != nil {
		return "(unparsable)"
	}
	kind, name := head.Kind, head.Metadata.Name
	if kind == "" {
		kind = "(no kind)"
	}
	if name == "" {
		name = "(no name)"
	}
	return kind + "/" + name
}
