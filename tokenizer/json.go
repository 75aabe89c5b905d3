package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/moetrain/moetrain/internal/atomicfile"
)

// Bounds on a tokenizer.json: a file over MaxFileSize, or with more than
// MaxVocab ids or MaxMerges merges, is refused before it is indexed.
const (
	MaxFileSize = 256 << 20
	MaxVocab    = 1 << 22
	MaxMerges   = 1 << 22
)

// LoadFile reads a Hugging Face tokenizer.json holding a byte-level BPE
// model (see Parse). Errors name the file.
func LoadFile(path string) (*BPE, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Mode().IsRegular() && st.Size() > MaxFileSize {
		return nil, fmt.Errorf("tokenizer %s: %d bytes, larger than %d", path, st.Size(), MaxFileSize)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("tokenizer %s: %w", path, err)
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("tokenizer %s: larger than %d bytes", path, MaxFileSize)
	}
	b, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("tokenizer %s: %w", path, err)
	}
	return b, nil
}

type fileJSON struct {
	AddedTokens  []addedJSON     `json:"added_tokens"`
	Normalizer   json.RawMessage `json:"normalizer"`
	PreTokenizer json.RawMessage `json:"pre_tokenizer"`
	Decoder      json.RawMessage `json:"decoder"`
	Model        *modelJSON      `json:"model"`
}

type addedJSON struct {
	ID         *int64  `json:"id"`
	Content    *string `json:"content"`
	SingleWord bool    `json:"single_word"`
	LStrip     bool    `json:"lstrip"`
	RStrip     bool    `json:"rstrip"`
	Special    bool    `json:"special"`
}

type modelJSON struct {
	Type                    string            `json:"type"`
	Dropout                 *float64          `json:"dropout"`
	ContinuingSubwordPrefix *string           `json:"continuing_subword_prefix"`
	EndOfWordSuffix         *string           `json:"end_of_word_suffix"`
	ByteFallback            bool              `json:"byte_fallback"`
	IgnoreMerges            bool              `json:"ignore_merges"`
	Vocab                   map[string]int64  `json:"vocab"`
	Merges                  []json.RawMessage `json:"merges"`
}

type byteLevelJSON struct {
	Type           string `json:"type"`
	AddPrefixSpace bool   `json:"add_prefix_space"`
	UseRegex       *bool  `json:"use_regex"`
}

// Parse reads a tokenizer.json: model.type "BPE" with a byte-level
// vocabulary (every byte a token), merges as "a b" strings or ["a", "b"]
// pairs, pre_tokenizer ByteLevel (add_prefix_space, use_regex), decoder
// ByteLevel or null, normalizer null, added_tokens without lstrip, rstrip
// or single_word. Anything else is refused with an error naming the field;
// the post_processor is not applied (ids are those of encoding without
// special tokens).
func Parse(data []byte) (*BPE, error) {
	var f fileJSON
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("not a tokenizer.json: %w", err)
	}
	m := f.Model
	if m == nil {
		return nil, fmt.Errorf("model: missing")
	}
	if m.Type != "BPE" {
		return nil, fmt.Errorf("model.type = %q: only \"BPE\" is supported", m.Type)
	}
	if m.Dropout != nil && *m.Dropout != 0 {
		return nil, fmt.Errorf("model.dropout = %v: only null or 0 is supported", *m.Dropout)
	}
	if m.ContinuingSubwordPrefix != nil && *m.ContinuingSubwordPrefix != "" {
		return nil, fmt.Errorf("model.continuing_subword_prefix = %q: only null is supported", *m.ContinuingSubwordPrefix)
	}
	if m.EndOfWordSuffix != nil && *m.EndOfWordSuffix != "" {
		return nil, fmt.Errorf("model.end_of_word_suffix = %q: only null is supported", *m.EndOfWordSuffix)
	}
	if m.ByteFallback {
		return nil, fmt.Errorf("model.byte_fallback = true: only false is supported (a byte-level vocabulary needs no fallback)")
	}
	if !isNull(f.Normalizer) {
		return nil, fmt.Errorf("normalizer = %s: only null is supported", short(f.Normalizer))
	}
	pre, err := byteLevel("pre_tokenizer", f.PreTokenizer, false)
	if err != nil {
		return nil, err
	}
	if _, err := byteLevel("decoder", f.Decoder, true); err != nil {
		return nil, err
	}
	if len(m.Vocab) == 0 {
		return nil, fmt.Errorf("model.vocab: missing or empty")
	}
	if len(m.Vocab) > MaxVocab || len(f.AddedTokens) > MaxVocab {
		return nil, fmt.Errorf("model.vocab: %d entries and %d added_tokens, at most %d each", len(m.Vocab), len(f.AddedTokens), MaxVocab)
	}
	if len(m.Merges) > MaxMerges {
		return nil, fmt.Errorf("model.merges: %d entries, at most %d", len(m.Merges), MaxMerges)
	}

	// Added tokens first: their ids may also be in model.vocab (GPT-2's
	// <|endoftext|>), where their text is then the content as it is.
	size := int64(0)
	added := make([]AddedToken, 0, len(f.AddedTokens))
	addedID := map[int64]int{}
	for i, a := range f.AddedTokens {
		switch {
		case a.ID == nil || *a.ID < 0 || *a.ID >= MaxVocab:
			return nil, fmt.Errorf("added_tokens[%d].id: missing or outside 0..%d", i, MaxVocab-1)
		case a.Content == nil || *a.Content == "":
			return nil, fmt.Errorf("added_tokens[%d].content: missing or empty", i)
		case a.LStrip || a.RStrip || a.SingleWord:
			return nil, fmt.Errorf("added_tokens[%d] (%q): lstrip, rstrip and single_word must be false", i, *a.Content)
		}
		if j, dup := addedID[*a.ID]; dup {
			return nil, fmt.Errorf("added_tokens[%d].id = %d repeats added_tokens[%d]", i, *a.ID, j)
		}
		addedID[*a.ID] = i
		added = append(added, AddedToken{ID: int32(*a.ID), Content: *a.Content, Special: a.Special})
		size = max(size, *a.ID+1)
	}
	// ids are dense in practice; bounding them by the entry count keeps a
	// small file from allocating a table for a huge id
	limit := int64(len(m.Vocab) + len(f.AddedTokens))
	if size > limit {
		return nil, fmt.Errorf("added_tokens: id %d, want ids below %d (the number of vocab entries and added tokens)", size-1, limit)
	}
	for tok, id := range m.Vocab {
		if id < 0 || id >= limit {
			return nil, fmt.Errorf("model.vocab[%q] = %d: outside 0..%d (ids below the number of vocab entries and added tokens)", tok, id, limit-1)
		}
		size = max(size, id+1)
	}
	tokens := make([][]byte, size)
	strs := make([]string, size)
	for _, a := range added {
		tokens[a.ID] = []byte(a.Content)
		strs[a.ID] = a.Content
	}
	for tok, id := range m.Vocab {
		if i, ok := addedID[id]; ok {
			if tok != added[i].Content {
				return nil, fmt.Errorf("model.vocab[%q] = %d: id is added_tokens[%d] %q", tok, id, i, added[i].Content)
			}
			continue
		}
		if strs[id] != "" {
			return nil, fmt.Errorf("model.vocab[%q] = %d: id is also model.vocab[%q]", tok, id, strs[id])
		}
		raw, ok := fromByteLevel(tok)
		if !ok || len(raw) == 0 {
			return nil, fmt.Errorf("model.vocab[%q] = %d: not a string of the byte-level alphabet", tok, id)
		}
		tokens[id], strs[id] = raw, tok
	}
	index := make(map[string]int32, len(m.Vocab))
	for tok, id := range m.Vocab {
		index[tok] = int32(id)
	}
	ranked := make([][2]int32, len(m.Merges))
	for i, raw := range m.Merges {
		a, b, err := parseMerge(raw)
		if err != nil {
			return nil, fmt.Errorf("model.merges[%d]: %w", i, err)
		}
		ia, oka := index[a]
		ib, okb := index[b]
		if !oka || !okb {
			return nil, fmt.Errorf("model.merges[%d]: %q or %q is not in model.vocab", i, a, b)
		}
		if _, isA := addedID[int64(ia)]; isA {
			return nil, fmt.Errorf("model.merges[%d]: %q is an added token", i, a)
		}
		if _, isB := addedID[int64(ib)]; isB {
			return nil, fmt.Errorf("model.merges[%d]: %q is an added token", i, b)
		}
		ranked[i] = [2]int32{ia, ib}
	}
	useRegex := pre.UseRegex == nil || *pre.UseRegex
	return newBPE(tokens, ranked, added, pre.AddPrefixSpace, useRegex, m.IgnoreMerges)
}

func isNull(r json.RawMessage) bool {
	t := bytes.TrimSpace(r)
	return len(t) == 0 || string(t) == "null"
}

// short is a JSON value cut for an error message.
func short(r json.RawMessage) string {
	if len(r) > 80 {
		return string(r[:80]) + "..."
	}
	return string(r)
}

// byteLevel checks that field is a ByteLevel component (or null where
// nullOK).
func byteLevel(field string, r json.RawMessage, nullOK bool) (byteLevelJSON, error) {
	var bl byteLevelJSON
	if isNull(r) {
		if nullOK {
			return bl, nil
		}
		return bl, fmt.Errorf("%s: missing; a byte-level BPE needs {\"type\": \"ByteLevel\"}", field)
	}
	if err := json.Unmarshal(r, &bl); err != nil {
		return bl, fmt.Errorf("%s: %w", field, err)
	}
	if bl.Type != "ByteLevel" {
		return bl, fmt.Errorf("%s.type = %q: only \"ByteLevel\" is supported", field, bl.Type)
	}
	return bl, nil
}

// parseMerge reads "a b" or ["a", "b"].
func parseMerge(raw json.RawMessage) (string, string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		i := bytes.IndexByte([]byte(s), ' ')
		if i < 0 || bytes.IndexByte([]byte(s[i+1:]), ' ') >= 0 {
			return "", "", fmt.Errorf("%q: want two tokens separated by one space", s)
		}
		return s[:i], s[i+1:], nil
	}
	var p []string
	if err := json.Unmarshal(raw, &p); err != nil || len(p) != 2 {
		return "", "", fmt.Errorf("%s: want \"a b\" or [\"a\", \"b\"]", short(raw))
	}
	return p[0], p[1], nil
}

// MarshalJSON writes b as a Hugging Face tokenizer.json (vocab in id
// order, merges as ["a", "b"] pairs), loadable by tokenizers and by Parse.
func (b *BPE) MarshalJSON() ([]byte, error) {
	var w bytes.Buffer
	str := func(s string) {
		e := json.NewEncoder(&w)
		e.SetEscapeHTML(false)
		_ = e.Encode(s) // a string always encodes
		w.Truncate(w.Len() - 1)
	}
	w.WriteString("{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": [")
	for i, a := range b.added {
		if i > 0 {
			w.WriteString(",")
		}
		fmt.Fprintf(&w, "\n    {\"id\": %d, \"content\": ", a.ID)
		str(a.Content)
		fmt.Fprintf(&w, ", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": %t}", a.Special)
	}
	bl := fmt.Sprintf(`{"type": "ByteLevel", "add_prefix_space": %t, "trim_offsets": true, "use_regex": %t}`, b.addPrefixSpace, b.useRegex)
	fmt.Fprintf(&w, "],\n  \"normalizer\": null,\n  \"pre_tokenizer\": %s,\n  \"post_processor\": %s,\n  \"decoder\": %s,\n", bl, bl, bl)
	fmt.Fprintf(&w, "  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": null,\n    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n    \"fuse_unk\": false,\n    \"byte_fallback\": false,\n    \"ignore_merges\": %t,\n    \"vocab\": {", b.ignoreMerges)
	isAdded := map[int32]string{}
	for _, a := range b.added {
		isAdded[a.ID] = a.Content
	}
	first := true
	for id, t := range b.tokens {
		if t == nil {
			continue
		}
		if !first {
			w.WriteString(",")
		}
		first = false
		w.WriteString("\n      ")
		if c, ok := isAdded[int32(id)]; ok {
			str(c)
		} else {
			str(toByteLevel(t))
		}
		w.WriteString(": " + strconv.Itoa(id))
	}
	w.WriteString("\n    },\n    \"merges\": [")
	for i, m := range b.ranked {
		if i > 0 {
			w.WriteString(",")
		}
		w.WriteString("\n      [")
		str(toByteLevel(b.tokens[m[0]]))
		w.WriteString(", ")
		str(toByteLevel(b.tokens[m[1]]))
		w.WriteString("]")
	}
	w.WriteString("\n    ]\n  }\n}\n")
	return w.Bytes(), nil
}

// WriteFile writes b's tokenizer.json to path atomically: a temporary file
// in the same directory, synced, renamed over path, and the directory
// synced, so path is always either the old file or the whole new one.
func (b *BPE) WriteFile(path string) error {
	data, _ := b.MarshalJSON() // never fails
	if err := atomicfile.Write(path, data, 0o644); err != nil {
		return fmt.Errorf("tokenizer: %w", err)
	}
	return nil
}
