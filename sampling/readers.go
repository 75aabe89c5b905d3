package sampling

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// maxJSONLine bounds one JSONL record, so a file without newlines cannot make
// the reader buffer without limit.
const maxJSONLine = 64 << 20

// IsEmbedded reports whether a data path names the embedded corpus.
func IsEmbedded(path string) bool { return path == "" || path == "embedded" }

// LoadCorpus reads a user's data set: a text file (one document), a .jsonl or
// .json file (one JSON object per line with a string field "text"; each line a
// document), or a directory (walked in sorted order, hidden entries skipped;
// every .jsonl/.json file is read as JSONL, every other regular file is one
// text document). Path "" or "embedded" returns DefaultCorpus (valFraction and
// seed are then ignored: the embedded split is fixed); "synthetic:bimodal" and
// "synthetic:lognormal" give 20,000 SyntheticDocuments.
//
// About valFraction of the documents, chosen by a hash of (seed, name), go to
// Val. When that leaves Val or Train empty (few documents), the last
// valFraction of every document's tokens is held out instead. Errors name the
// file and, for JSONL, the line.
func LoadCorpus(path string, valFraction float64, seed uint64) (*Corpus, error) {
	return loadCorpusField(path, valFraction, seed, "text")
}

// loadCorpusField is LoadCorpus with a configurable JSONL text field.
func loadCorpusField(path string, valFraction float64, seed uint64, field string) (*Corpus, error) {
	if IsEmbedded(path) {
		return DefaultCorpus()
	}
	if math.IsNaN(valFraction) || valFraction < 0 || valFraction >= 1 {
		return nil, fmt.Errorf("load %s: validation fraction %v, want 0 <= f < 1", path, valFraction)
	}
	if IsPrepared(path) { // never read token shards as text
		return nil, fmt.Errorf("load %s: a prepared dataset is read through Open (memory maps), not into memory", path)
	}
	var docs []Document
	var err error
	if IsSynthetic(path) {
		docs, err = SyntheticDocuments(path, syntheticDocs, 1)
	} else {
		docs, err = ReadDocuments(path, field)
	}
	if err != nil {
		return nil, err
	}
	c := &Corpus{Name: path}
	c.Train, c.Val = splitTrainVal(docs, valFraction, seed)
	if len(c.Train) == 0 {
		return nil, fmt.Errorf("load %s: no training tokens left after holding out %.3g", path, valFraction)
	}
	if valFraction > 0 && len(c.Val) == 0 {
		return nil, fmt.Errorf("load %s: documents too short to hold out a validation fraction of %.3g (set it to 0 to train without validation)", path, valFraction)
	}
	return c, nil
}

// ReadDocuments reads documents as LoadCorpus does, without splitting; JSONL
// records take their text from field.
func ReadDocuments(path, field string) ([]Document, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read data: %w", err)
	}
	if !st.IsDir() {
		return readFile(path, field)
	}
	var docs []Document
	err = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("read data: %w", err)
		}
		if p != path && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		ds, err := readFile(p, field)
		if err != nil {
			return err
		}
		docs = append(docs, ds...)
		return nil
	})
	return docsOrError(docs, err, "read data: directory %s holds no documents", path)
}

// docsOrError is what a reader that gathered docs returns: err if not nil,
// else docs, or, when docs is empty, the error that format and args describe.
func docsOrError(docs []Document, err error, format string, args ...any) ([]Document, error) {
	if err != nil {
		return nil, err
	}
	if len(docs) == 0 {
		return nil, fmt.Errorf(format, args...)
	}
	return docs, nil
}

func isJSONL(path string) bool {
	ext := strings.ToLower(filepath.Ext(path))
	return ext == ".jsonl" || ext == ".json"
}

func readFile(path, field string) ([]Document, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read data: %w", err)
	}
	defer f.Close()
	if isJSONL(path) {
		return ReadJSONL(f, path, field)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("read data %s: %w", path, err)
	}
	if len(data) == 0 {
		return nil, fmt.Errorf("read data %s: file is empty", path)
	}
	return []Document{{Name: path, Tokens: ByteTokenize(data)}}, nil
}

// ReadJSONL reads one document per line from the string field of each JSON
// object; blank lines are skipped. name is used in errors ("name:line: ...")
// and document names ("name:line").
func ReadJSONL(r io.Reader, name, field string) ([]Document, error) {
	var docs []Document
	err := scanJSONL(r, name, func(line int, obj map[string]json.RawMessage) error {
		text, err := stringField(obj, field)
		if err != nil {
			return err
		}
		if text == "" {
			return fmt.Errorf("field %q is empty", field)
		}
		docs = append(docs, Document{Name: fmt.Sprintf("%s:%d", name, line), Tokens: ByteTokenize([]byte(text))})
		return nil
	})
	return docsOrError(docs, err, "read data %s: no JSON records", name)
}

// scanJSONL calls fn with every non-blank line parsed as a JSON object; an
// error from parsing or from fn is returned as "read data name:line: ...".
func scanJSONL(r io.Reader, name string, fn func(line int, obj map[string]json.RawMessage) error) error {
	br := bufio.NewReaderSize(r, 1<<16)
	for line := 1; ; line++ {
		raw, err := readLine(br)
		if err == io.EOF && raw == nil {
			return nil
		}
		if err != nil && err != io.EOF {
			return fmt.Errorf("read data %s:%d: %w", name, line, err)
		}
		trimmed := bytes.TrimSpace(raw)
		if len(trimmed) > 0 {
			var obj map[string]json.RawMessage
			if jerr := json.Unmarshal(trimmed, &obj); jerr != nil {
				return fmt.Errorf("read data %s:%d: not a JSON object: %w", name, line, jerr)
			}
			if obj == nil {
				return fmt.Errorf("read data %s:%d: not a JSON object (null)", name, line)
			}
			if ferr := fn(line, obj); ferr != nil {
				return fmt.Errorf("read data %s:%d: %w", name, line, ferr)
			}
		}
		if err == io.EOF {
			return nil
		}
	}
}

var errLineTooLong = fmt.Errorf("line longer than %d bytes", maxJSONLine)

// readLine returns the next line without its newline; (nil, io.EOF) at the end.
func readLine(br *bufio.Reader) ([]byte, error) {
	var out []byte
	for {
		chunk, err := br.ReadSlice('\n')
		out = append(out, chunk...)
		if len(out) > maxJSONLine {
			return nil, errLineTooLong
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == io.EOF {
			if len(out) == 0 {
				return nil, io.EOF
			}
			return out, io.EOF
		}
		if err != nil {
			return nil, err
		}
		return bytes.TrimSuffix(out, []byte("\n")), nil
	}
}

func stringField(obj map[string]json.RawMessage, field string) (string, error) {
	raw, ok := obj[field]
	if !ok {
		return "", fmt.Errorf("missing field %q", field)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf("field %q is not a string", field)
	}
	return s, nil
}

func intField(obj map[string]json.RawMessage, field string) (int, error) {
	raw, ok := obj[field]
	if !ok {
		return 0, fmt.Errorf("missing field %q", field)
	}
	var v float64
	if err := json.Unmarshal(raw, &v); err != nil {
		return 0, fmt.Errorf("field %q is not a number", field)
	}
	if v < 0 || v != math.Trunc(v) || v > 1<<30 {
		return 0, fmt.Errorf("field %q = %v, want a non-negative integer", field, v)
	}
	return int(v), nil
}

// splitTrainVal holds out documents by a hash of (seed, index, name), falling
// back to holding out the tail of every document (see LoadCorpus).
func splitTrainVal(docs []Document, frac float64, seed uint64) (train, val []Document) {
	if frac == 0 {
		return docs, nil
	}
	for i, d := range docs {
		if heldOut(seed, i, d.Name, frac) {
			val = append(val, d)
		} else {
			train = append(train, d)
		}
	}
	if len(train) > 0 && len(val) > 0 {
		return train, val
	}
	train, val = nil, nil
	for _, d := range docs {
		n := len(d.Tokens)
		k := int(math.Ceil(frac * float64(n)))
		if n < 4 || k < 2 || n-k < 2 {
			train = append(train, d)
			continue
		}
		train = append(train, Document{Name: d.Name + "#train", Tokens: d.Tokens[:n-k]})
		val = append(val, Document{Name: d.Name + "#val", Tokens: d.Tokens[n-k:]})
	}
	return train, val
}

// heldOut is the validation rule shared by documents and two-length
// records: record i named name is held out with probability frac, decided by
// (seed, i, name) alone.
func heldOut(seed uint64, i int, name string, frac float64) bool {
	r := rng{s: mix(seed, purposeSplit, uint64(i), hashString(name))}
	return r.float64() < frac
}

// hashString is 64-bit FNV-1a (hash/fnv's New64a, without its allocation).
func hashString(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}
