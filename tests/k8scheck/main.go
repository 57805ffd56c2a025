// k8scheck checks Kubernetes manifests the way a strict API server and the PodSecurity admission
// controller would, without a cluster:
//
//   - every document of every file (or of stdin) is decoded by apiVersion/kind into its typed Go
//     struct (k8s.io/api, and local mirrors of SPIRE controller-manager's CRDs); unknown fields,
//     duplicate fields and unknown kinds are errors;
//   - the pod spec of every pod-bearing object (Pod, PodTemplate, Deployment, StatefulSet,
//     DaemonSet, ReplicaSet, ReplicationController, Job, CronJob) is evaluated by
//     k8s.io/pod-security-admission at the given level (default "restricted", version "latest").
//
// Each problem is one line: FILE: document N (line L): KIND/NAME: what is wrong. The exit status
// is 0 when nothing is wrong, 1 when something is, and 2 on bad usage or an unreadable file.
//
// Usage: k8scheck [-level restricted|baseline] [-version latest|v1.X] [-v] [FILE...]   ("-" or
// no file: stdin)
package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	psaapi "k8s.io/pod-security-admission/api"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("k8scheck", flag.ContinueOnError)
	flags.SetOutput(stderr)
	level := flags.String("level", "restricted", "Pod Security level: restricted or baseline")
	version := flags.String("version", "latest", `Pod Security version: "latest" or "v1.X"`)
	verbose := flags.Bool("v", false, "also print one line per object that passes")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	lv, err := parseLevelVersion(*level, *version)
	if err != nil {
		fmt.Fprintf(stderr, "k8scheck: %v\n", err)
		return 2
	}
	checker, err := newChecker(lv)
	if err != nil {
		fmt.Fprintf(stderr, "k8scheck: %v\n", err)
		return 2
	}
	files := flags.Args()
	if len(files) == 0 {
		files = []string{"-"}
	}
	var totals summary
	for _, name := range files {
		data, err := readInput(name, stdin)
		if err != nil {
			fmt.Fprintf(stderr, "k8scheck: %v\n", err)
			return 2
		}
		totals.add(checker.checkFile(displayName(name), data, stdout, *verbose))
	}
	totals.files = len(files)
	fmt.Fprintln(stdout, totals.line(lv))
	if totals.problems > 0 {
		return 1
	}
	return 0
}

func parseLevelVersion(level, version string) (psaapi.LevelVersion, error) {
	l, err := psaapi.ParseLevel(level)
	if err != nil {
		return psaapi.LevelVersion{}, err
	}
	if l == psaapi.LevelPrivileged {
		return psaapi.LevelVersion{}, fmt.Errorf(`level "privileged" checks nothing; use baseline or restricted`)
	}
	v, err := psaapi.ParseVersion(version)
	if err != nil {
		return psaapi.LevelVersion{}, err
	}
	return psaapi.LevelVersion{Level: l, Version: v}, nil
}

func readInput(name string, stdin io.Reader) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(stdin)
	}
	return os.ReadFile(name)
}

func displayName(name string) string {
	if name == "-" {
		return "<stdin>"
	}
	return name
}

// summary counts what was checked; one line of it ends every run.
type summary struct {
	files, objects, podSpecs, problems int
}

func (s *summary) add(o summary) {
	s.objects += o.objects
	s.podSpecs += o.podSpecs
	s.problems += o.problems
}

func (s summary) line(lv psaapi.LevelVersion) string {
	verdict := "OK"
	if s.problems > 0 {
		verdict = fmt.Sprintf("%d problem(s)", s.problems)
	}
	return fmt.Sprintf("k8scheck: %d file(s), %d object(s) decoded strictly, %d pod spec(s) checked against PodSecurity %q: %s",
		s.files, s.objects, s.podSpecs, lv.String(), verdict)
}
