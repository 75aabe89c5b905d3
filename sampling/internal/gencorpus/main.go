// Command gencorpus rebuilds sampling/corpus/gostd.bin, the embedded default
// corpus, from the Go standard library sources of the installed toolchain.
//
// By default (the embedded corpus) it reads every portable, public .go file:
// no test files, no generated files, no file with a //go:build constraint or
// a GOOS/GOARCH name suffix, none in an internal package, none over 60,000
// bytes. Comments are removed (//go: directives kept): comment prose and
// platform-specific code are what the small byte-level model learns slowest
// (docs/decisions.md#the-embedded-corpus).
// Each file is cut after every top-level declaration ("span" unit): a
// document is one declaration with what precedes it, so document lengths vary
// naturally from a few dozen bytes to many kilobytes, and a file's documents
// concatenate to the file. Files are visited in sorted order, so the same
// toolchain version always produces the same bytes. Flags select other units
// and filters (-unit decl|file, -keep N, -portable=false, -public=false,
// -strip-comments=false, -skip-experiments, -tests). Run from the
// repository root:
//
//	go run ./sampling/internal/gencorpus -goroot /usr/local/go -out sampling/corpus/gostd.bin
//
// The output format is read by sampling.DefaultCorpus: the magic line
// "MOECORPUS1\n", then gzip of records uvarint(len(name)) name
// uvarint(len(text)) text. The toolchain's LICENSE is copied beside it.
//
// It is a maintainer's tool: no binary may depend on it (the corpus it writes
// is embedded), and its output must be reproducible from the toolchain
// version and the flags (sorted walk, no clocks, no randomness).
package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"hash/fnv"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

func main() {
	goroot := flag.String("goroot", "/usr/local/go", "Go toolchain root whose src/ is read")
	out := flag.String("out", "sampling/corpus/gostd.bin", "output corpus file")
	keep := flag.Uint64("keep", 1, "keep files whose path hash modulo this is 0")
	maxFile := flag.Int("max-file-bytes", 60000, "skip source files larger than this")
	var o options
	flag.StringVar(&o.unit, "unit", "span", `document unit: "span" (a file cut after each top-level declaration), "decl" (declarations alone) or "file"`)
	flag.BoolVar(&o.skipExperiments, "skip-experiments", false, "skip files built only under a goexperiment build tag")
	flag.BoolVar(&o.portable, "portable", true, "skip files with a //go:build constraint or a GOOS/GOARCH file-name suffix")
	flag.BoolVar(&o.public, "public", true, "skip internal packages (a path element named internal)")
	flag.BoolVar(&o.tests, "tests", false, "also read _test.go files")
	flag.BoolVar(&o.stripComments, "strip-comments", true, "remove comments (kept: //go: directives and build constraints)")
	flag.Parse()
	if err := run(*goroot, *out, *keep, *maxFile, o); err != nil {
		fmt.Fprintln(os.Stderr, "gencorpus:", err)
		os.Exit(1)
	}
}

// options selects the document unit and the file filters.
type options struct {
	unit            string
	skipExperiments bool
	stripComments   bool
	tests           bool
	portable        bool
	public          bool
}

type doc struct {
	name string
	text []byte
}

func run(goroot, out string, keep uint64, maxFile int, o options) error {
	if keep == 0 {
		return fmt.Errorf("-keep must be positive")
	}
	if o.unit != "decl" && o.unit != "file" && o.unit != "span" {
		return fmt.Errorf("-unit %q: want decl, span or file", o.unit)
	}
	src := filepath.Join(goroot, "src")
	var files []string
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			base := d.Name()
			if base == "testdata" || base == "vendor" || rel == "cmd" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(rel, ".go") || (!o.tests && strings.HasSuffix(rel, "_test.go")) {
			return nil
		}
		h := fnv.New64a()
		h.Write([]byte(rel))
		if h.Sum64()%keep == 0 {
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("walk %s: %w", src, err)
	}
	sort.Strings(files)
	var docs []doc
	total := 0
	for _, rel := range files {
		data, err := os.ReadFile(filepath.Join(src, rel))
		if err != nil {
			return err
		}
		if len(data) > maxFile || isGenerated(data) || (o.skipExperiments && isExperiment(data)) || (o.portable && !isPortable(rel, data)) ||
			(o.public && isInternal(rel)) {
			continue
		}
		if o.stripComments {
			if data, err = stripComments(rel, data); err != nil {
				fmt.Fprintf(os.Stderr, "gencorpus: skip %s: %v\n", rel, err)
				continue
			}
		}
		var ds []doc
		switch o.unit {
		case "span":
			ds, err = splitSpans(rel, data)
		case "file":
			// Named like a declaration at line 1, so readers that cut the
			// name at its last colon get the file path.
			ds = []doc{{name: rel + ":1", text: data}}
		default:
			ds, err = splitDecls(rel, data)
		}
		if err != nil {
			// A file the parser rejects (build-tag only stubs for other
			// toolchains do not exist in src/, but be safe): skip it.
			fmt.Fprintf(os.Stderr, "gencorpus: skip %s: %v\n", rel, err)
			continue
		}
		for _, d := range ds {
			total += len(d.text)
		}
		docs = append(docs, ds...)
	}
	var buf bytes.Buffer
	buf.WriteString("MOECORPUS1\n")
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return err
	}
	bw := bufio.NewWriter(zw)
	var tmp [binary.MaxVarintLen64]byte
	for _, d := range docs {
		n := binary.PutUvarint(tmp[:], uint64(len(d.name)))
		bw.Write(tmp[:n])
		bw.WriteString(d.name)
		n = binary.PutUvarint(tmp[:], uint64(len(d.text)))
		bw.Write(tmp[:n])
		bw.Write(d.text)
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
		return err
	}
	lic, err := os.ReadFile(filepath.Join(goroot, "LICENSE"))
	if err != nil {
		return fmt.Errorf("read toolchain LICENSE: %w", err)
	}
	if err := os.WriteFile(filepath.Join(filepath.Dir(out), "LICENSE"), lic, 0o644); err != nil {
		return err
	}
	lens := make([]int, len(docs))
	for i, d := range docs {
		lens[i] = len(d.text)
	}
	sort.Ints(lens)
	over := 0
	for _, l := range lens {
		if l > 2048 {
			over++
		}
	}
	fmt.Printf("%d files, %d documents, %d bytes raw, %d bytes stored; doc length p10 %d p50 %d p90 %d p99 %d max %d; >2048: %d\n",
		len(files), len(docs), total, buf.Len(), lens[len(lens)/10], lens[len(lens)/2], lens[len(lens)*9/10],
		lens[len(lens)*99/100], lens[len(lens)-1], over)
	return nil
}

func isGenerated(data []byte) bool {
	head := data
	if len(head) > 2000 {
		head = head[:2000]
	}
	return bytes.Contains(head, []byte("Code generated")) && bytes.Contains(head, []byte("DO NOT EDIT"))
}

// isExperiment reports whether the file's build constraint requires a
// goexperiment tag: such code is not part of the default toolchain.
func isExperiment(data []byte) bool {
	for _, line := range bytes.Split(data, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if bytes.HasPrefix(line, []byte("package ")) {
			return false
		}
		if bytes.HasPrefix(line, []byte("//go:build ")) && bytes.Contains(line, []byte("goexperiment.")) && !bytes.Contains(line, []byte("!goexperiment.")) {
			return true
		}
	}
	return false
}

// isInternal reports whether rel lies in an internal package, which only the
// standard library itself may import.
func isInternal(rel string) bool {
	for _, e := range strings.Split(path.Dir(rel), "/") {
		if e == "internal" {
			return true
		}
	}
	return false
}

// isPortable reports whether a file builds everywhere: no //go:build line
// before the package clause and no _GOOS or _GOARCH name suffix.
func isPortable(rel string, data []byte) bool {
	for _, line := range bytes.Split(data, []byte("\n")) {
		if bytes.HasPrefix(line, []byte("package ")) {
			break
		}
		if bytes.HasPrefix(line, []byte("//go:build ")) {
			return false
		}
	}
	parts := strings.Split(strings.TrimSuffix(path.Base(rel), ".go"), "_")
	for _, p := range parts[1:] {
		if knownOSArch[p] {
			return false
		}
	}
	return true
}

var knownOSArch = map[string]bool{}

func init() {
	for _, w := range strings.Fields("aix android darwin dragonfly freebsd hurd illumos ios js linux nacl netbsd openbsd plan9 solaris wasip1 windows zos " +
		"386 amd64 arm arm64 loong64 mips mipsle mips64 mips64le ppc64 ppc64le riscv64 s390x wasm") {
		knownOSArch[w] = true
	}
}

// stripComments removes every comment except //go: directives (build
// constraints, compiler pragmas). A line left blank by a removal is dropped
// and trailing blanks are trimmed, so the code keeps gofmt's shape.
func stripComments(rel string, data []byte) ([]byte, error) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, rel, data, parser.ParseComments|parser.SkipObjectResolution)
	if err != nil {
		return nil, err
	}
	var out []byte
	prev := 0
	touched := map[int]bool{} // offsets in out of lines that lost a comment
	for _, g := range f.Comments {
		for _, c := range g.List {
			if strings.HasPrefix(c.Text, "//go:") {
				continue
			}
			s, e := fset.Position(c.Pos()).Offset, fset.Position(c.End()).Offset
			out = append(out, data[prev:s]...)
			prev = e
			touched[bytes.LastIndexByte(out, '\n')+1] = true
		}
	}
	out = append(out, data[prev:]...)
	var res []byte
	for start := 0; start < len(out); {
		end := len(out)
		if i := bytes.IndexByte(out[start:], '\n'); i >= 0 {
			end = start + i + 1
		}
		line := out[start:end]
		if !touched[start] || len(bytes.TrimSpace(line)) > 0 {
			res = append(res, bytes.TrimRight(line, " \t\n")...)
			if line[len(line)-1] == '\n' {
				res = append(res, '\n')
			}
		}
		start = end
	}
	return res, nil
}

// goDecls parses the Go file rel, whose source is data, and returns its
// top-level declarations other than imports, in order.
func goDecls(rel string, data []byte) (*token.FileSet, []ast.Decl, error) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, rel, data, parser.ParseComments|parser.SkipObjectResolution)
	if err != nil {
		return nil, nil, err
	}
	var decls []ast.Decl
	for _, decl := range f.Decls {
		if g, ok := decl.(*ast.GenDecl); !ok || g.Tok != token.IMPORT {
			decls = append(decls, decl)
		}
	}
	return fset, decls, nil
}

// splitSpans cuts a Go file after the line end of every top-level
// declaration other than imports: each document is one declaration with all
// that precedes it since the previous cut (blank lines, doc comment; for the
// first, the file header, package clause and imports), and the last also
// holds what follows the last declaration. The documents of a file
// concatenate to the file exactly, so a sampler that concatenates documents
// sees the same stream as with whole files.
func splitSpans(rel string, data []byte) ([]doc, error) {
	fset, decls, err := goDecls(rel, data)
	if err != nil {
		return nil, err
	}
	var docs []doc
	prev, line := 0, 1
	for _, decl := range decls {
		cut := fset.Position(decl.End()).Offset
		if i := bytes.IndexByte(data[cut:], '\n'); i >= 0 {
			cut += i + 1
		} else {
			cut = len(data)
		}
		if cut <= prev {
			continue
		}
		docs = append(docs, doc{name: fmt.Sprintf("%s:%d", rel, line), text: append([]byte(nil), data[prev:cut]...)})
		line += bytes.Count(data[prev:cut], []byte("\n"))
		prev = cut
	}
	if prev < len(data) {
		if len(docs) == 0 {
			docs = append(docs, doc{name: fmt.Sprintf("%s:%d", rel, line)})
		}
		last := &docs[len(docs)-1]
		last.text = append(last.text, data[prev:]...)
	}
	return docs, nil
}

// splitDecls returns one document per top-level declaration of a Go file:
// the declaration's source from its doc comment (if any) to its end. The
// package clause, imports and the file's leading comment form no document.
func splitDecls(rel string, data []byte) ([]doc, error) {
	fset, decls, err := goDecls(rel, data)
	if err != nil {
		return nil, err
	}
	var docs []doc
	for _, decl := range decls {
		start := decl.Pos()
		switch d := decl.(type) {
		case *ast.FuncDecl:
			if d.Doc != nil {
				start = d.Doc.Pos()
			}
		case *ast.GenDecl:
			if d.Doc != nil {
				start = d.Doc.Pos()
			}
		}
		s := fset.Position(start).Offset
		e := fset.Position(decl.End()).Offset
		if s < 0 || e > len(data) || s >= e {
			continue
		}
		text := append([]byte(nil), data[s:e]...)
		text = append(text, '\n')
		line := fset.Position(start).Line
		docs = append(docs, doc{name: fmt.Sprintf("%s:%d", rel, line), text: text})
	}
	return docs, nil
}
