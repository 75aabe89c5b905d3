// Command gencorpus rebuilds sampling/corpus/gostd.bin, the embedded default
// corpus, from the Go standard library sources of the installed toolchain.
//
// Every selected file is split into top-level declarations (with their doc
// comments); each declaration is one document, so document lengths vary
// naturally from a few dozen bytes to many kilobytes. Files are selected
// deterministically (sorted walk, FNV-1a hash of the path), generated files
// and test files are skipped, so the same toolchain version always produces
// the same bytes. Run from the repository root:
//
//	go run ./sampling/internal/gencorpus -goroot /usr/local/go -out sampling/corpus/gostd.bin
//
// The output format is read by sampling.DefaultCorpus: the magic line
// "MOECORPUS1\n", then gzip of records uvarint(len(name)) name
// uvarint(len(text)) text. The toolchain's LICENSE is copied beside it.
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
	"path/filepath"
	"sort"
	"strings"
)

func main() {
	goroot := flag.String("goroot", "/usr/local/go", "Go toolchain root whose src/ is read")
	out := flag.String("out", "sampling/corpus/gostd.bin", "output corpus file")
	keep := flag.Uint64("keep", 3, "keep files whose path hash modulo this is 0")
	maxFile := flag.Int("max-file-bytes", 60000, "skip source files larger than this")
	flag.Parse()
	if err := run(*goroot, *out, *keep, *maxFile); err != nil {
		fmt.Fprintln(os.Stderr, "gencorpus:", err)
		os.Exit(1)
	}
}

type doc struct {
	name string
	text []byte
}

func run(goroot, out string, keep uint64, maxFile int) error {
	if keep == 0 {
		return fmt.Errorf("-keep must be positive")
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
		if !strings.HasSuffix(rel, ".go") || strings.HasSuffix(rel, "_test.go") {
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
		if len(data) > maxFile || isGenerated(data) {
			continue
		}
		ds, err := splitDecls(rel, data)
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

// splitDecls returns one document per top-level declaration of a Go file:
// the declaration's source from its doc comment (if any) to its end. The
// package clause, imports and the file's leading comment form no document.
func splitDecls(rel string, data []byte) ([]doc, error) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, rel, data, parser.ParseComments|parser.SkipObjectResolution)
	if err != nil {
		return nil, err
	}
	var docs []doc
	for _, decl := range f.Decls {
		if g, ok := decl.(*ast.GenDecl); ok && g.Tok == token.IMPORT {
			continue
		}
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
