package sampling

import (
	"bufio"
	"bytes"
	"compress/gzip"
	_ "embed"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
)

// Document is one example of raw text, already tokenized.
type Document struct {
	Name   string // where it came from: "file", "file:line" or "file#piece"
	Tokens []int32
}

// Corpus is a named set of documents split into training and held-out
// validation documents.
type Corpus struct {
	Name       string
	Train, Val []Document
}

// Vocab is the vocabulary size of the byte tokenizer.
const Vocab = 256

// ByteTokenize maps every byte to its own token id (0..255).
func ByteTokenize(s []byte) []int32 {
	out := make([]int32, len(s))
	for i, c := range s {
		out[i] = int32(c)
	}
	return out
}

// ByteDetokenize is the inverse of ByteTokenize; ids outside 0..255 become '?'.
func ByteDetokenize(ids []int32) []byte {
	out := make([]byte, len(ids))
	for i, t := range ids {
		if t < 0 || t > 255 {
			out[i] = '?'
			continue
		}
		out[i] = byte(t)
	}
	return out
}

// The embedded default corpus: the portable, non-internal, non-test source
// files of the Go standard library with comments stripped, each cut after
// every top-level declaration into documents (BSD licence in
// corpus/LICENSE), rebuilt by sampling/internal/gencorpus. See that command
// for the selection and the format.
//
//go:embed corpus/gostd.bin
var gostdBlob []byte

//go:embed corpus/LICENSE
var gostdLicense string

// DefaultCorpusLicense is the licence of the embedded corpus's text.
func DefaultCorpusLicense() string { return gostdLicense }

const corpusMagic = "MOECORPUS1\n"

// embeddedValMod holds out the documents of every source file whose FNV-1a
// path hash is 0 modulo 20 (about 5% of files). Whole files are held out so
// that validation text is not a neighbour of training text.
const embeddedValMod = 20

var (
	defaultOnce   sync.Once
	defaultCorpus *Corpus
	defaultErr    error
)

// DefaultCorpus returns the embedded corpus, held-out documents in Val. The
// result is decoded once and shared: callers must not modify it.
func DefaultCorpus() (*Corpus, error) {
	defaultOnce.Do(func() {
		docs, err := decodeCorpus(gostdBlob)
		if err != nil {
			defaultErr = fmt.Errorf("embedded corpus: %w", err)
			return
		}
		c := &Corpus{Name: "embedded:gostd"}
		for _, d := range docs {
			file := d.Name
			if i := strings.LastIndexByte(file, ':'); i >= 0 {
				file = file[:i]
			}
			if hashString(file)%embeddedValMod == 0 {
				c.Val = append(c.Val, d)
			} else {
				c.Train = append(c.Train, d)
			}
		}
		if len(c.Train) == 0 || len(c.Val) == 0 {
			defaultErr = fmt.Errorf("embedded corpus: %d train and %d validation documents, want both > 0", len(c.Train), len(c.Val))
			return
		}
		defaultCorpus = c
	})
	return defaultCorpus, defaultErr
}

// decodeCorpus parses the gencorpus format. Errors name the record index.
func decodeCorpus(blob []byte) ([]Document, error) {
	if !bytes.HasPrefix(blob, []byte(corpusMagic)) {
		return nil, errors.New("missing MOECORPUS1 header")
	}
	zr, err := gzip.NewReader(bytes.NewReader(blob[len(corpusMagic):]))
	if err != nil {
		return nil, fmt.Errorf("gzip: %w", err)
	}
	br := bufio.NewReader(zr)
	var docs []Document
	for i := 0; ; i++ {
		nameLen, err := binary.ReadUvarint(br)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("record %d: name length: %w", i, err)
		}
		if nameLen > 4096 {
			return nil, fmt.Errorf("record %d: name length %d too large", i, nameLen)
		}
		name := make([]byte, nameLen)
		if _, err := io.ReadFull(br, name); err != nil {
			return nil, fmt.Errorf("record %d: name: %w", i, err)
		}
		textLen, err := binary.ReadUvarint(br)
		if err != nil {
			return nil, fmt.Errorf("record %d (%s): text length: %w", i, name, err)
		}
		if textLen > 1<<26 {
			return nil, fmt.Errorf("record %d (%s): text length %d too large", i, name, textLen)
		}
		text := make([]byte, textLen)
		if _, err := io.ReadFull(br, text); err != nil {
			return nil, fmt.Errorf("record %d (%s): text: %w", i, name, err)
		}
		docs = append(docs, Document{Name: string(name), Tokens: ByteTokenize(text)})
	}
	if len(docs) == 0 {
		return nil, errors.New("no documents")
	}
	return docs, nil
}

// TotalTokens sums the token counts of docs.
func TotalTokens(docs []Document) int {
	n := 0
	for _, d := range docs {
		n += len(d.Tokens)
	}
	return n
}
