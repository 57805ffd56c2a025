package main

import (
	"bytes"
	"strings"
)

// document is one YAML document of a file: its 1-based index among the file's documents and
// the line it starts on.
type document struct {
	index int
	line  int
	data  []byte
}

// splitDocuments cuts a multi-document YAML stream at its "---" separators. Every separator
// starts a new document, so the indexes match what an editor shows; empty documents (only
// comments or blank lines, e.g. the leading one of `helm template` output) keep their index
// and are skipped by the caller.
func splitDocuments(data []byte) []document {
	var docs []document
	current := document{index: 1, line: 1}
	var buf bytes.Buffer
	lines := strings.SplitAfter(string(data), "\n")
	for i, line := range lines {
		if isSeparator(line) {
			current.data = append([]byte(nil), buf.Bytes()...)
			docs = append(docs, current)
			buf.Reset()
			current = document{index: current.index + 1, line: i + 2}
			// "--- # comment" or "--- value": the rest of the line belongs to the new document.
			buf.WriteString(strings.TrimPrefix(strings.TrimLeft(line[3:], " \t"), "\n"))
			continue
		}
		buf.WriteString(line)
	}
	current.data = buf.Bytes()
	return append(docs, current)
}

func isSeparator(line string) bool {
	if !strings.HasPrefix(line, "---") {
		return false
	}
	rest := line[3:]
	return rest == "" || rest[0] == ' ' || rest[0] == '\t' || rest[0] == '\n' || rest[0] == '\r'
}

// isEmpty reports whether a document holds nothing but comments and blank lines.
func isEmpty(data []byte) bool {
	for _, line := range strings.Split(string(data), "\n") {
		t := strings.TrimSpace(line)
		if t != "" && !strings.HasPrefix(t, "#") {
			return false
		}
	}
	return true
}
