package sampling

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/moetrain/moetrain/sampling/tokshard"
	"github.com/moetrain/moetrain/tokenizer"
)

// The corpus readers produce byte tokens (ByteTokenize); with a BPE
// data.tokenizer, Open re-encodes every loaded document with it, and the
// samplers' states carry its fingerprint so that a resume under another
// tokenizer is refused (docs/tokenizer.md).

// retokenize returns a copy of c whose documents are encoded by tk (c holds
// byte tokens and may be the shared embedded corpus, so it is not changed).
func retokenize(c *Corpus, tk tokenizer.Tokenizer) (*Corpus, error) {
	out := &Corpus{Name: c.Name}
	var err error
	if out.Train, err = retokenizeDocs(c.Train, tk); err != nil {
		return nil, err
	}
	if out.Val, err = retokenizeDocs(c.Val, tk); err != nil {
		return nil, err
	}
	return out, nil
}

func retokenizeDocs(docs []Document, tk tokenizer.Tokenizer) ([]Document, error) {
	out := make([]Document, len(docs))
	var buf []byte
	for i, d := range docs {
		buf = buf[:0]
		for j, t := range d.Tokens {
			if t < 0 || t > 255 {
				return nil, fmt.Errorf("document %s: token %d = %d is not a byte", d.Name, j, t)
			}
			buf = append(buf, byte(t))
		}
		out[i] = Document{Name: d.Name, Tokens: tk.Append(nil, buf)}
	}
	return out, nil
}

// tokenizerSampler adds the tokenizer's fingerprint to a sampler's state
// and refuses to restore a state taken under another tokenizer. A state
// without one (older checkpoints, byte runs) counts as the byte tokenizer.
type tokenizerSampler struct {
	Sampler
	fp string
}

func (s tokenizerSampler) State() State {
	st := s.Sampler.State()
	st.Tokenizer = s.fp
	return st
}

func (s tokenizerSampler) Restore(st State) error {
	if err := checkTokenizer(st, s.fp); err != nil {
		return err
	}
	st.Tokenizer = ""
	return s.Sampler.Restore(st)
}

// checkTokenizer refuses a state whose tokenizer fingerprint is not fp
// ("" and "byte" both mean the byte tokenizer).
func checkTokenizer(st State, fp string) error {
	norm := func(s string) string {
		if s == "" {
			return tokenizer.ByteFingerprint
		}
		return s
	}
	if norm(st.Tokenizer) != norm(fp) {
		return fmt.Errorf("sampler state was taken with tokenizer %s, this run uses %s (data.tokenizer changed?)", norm(st.Tokenizer), norm(fp))
	}
	return nil
}

// checkPreparedTokenizer refuses a prepared dataset made with another
// tokenizer than tk: the tokenizer its prepare summary names
// (tokshard.SummaryFile: "byte" or a BPE fingerprint) must be tk's, and
// with a BPE tk its vocabulary must be tk's. With the byte tokenizer (the
// default) a dataset written by other means, of any vocabulary and
// without a summary, is accepted as it is.
func checkPreparedTokenizer(p *Prepared, tk tokenizer.Tokenizer) error {
	isByte := tk.Fingerprint() == tokenizer.ByteFingerprint
	if !isByte && p.Vocab != tk.VocabSize() {
		return fmt.Errorf("data %s: prepared with a vocabulary of %d, data.tokenizer (%s) has %d", p.Dir, p.Vocab, tk.Fingerprint(), tk.VocabSize())
	}
	b, err := os.ReadFile(filepath.Join(p.Dir, tokshard.SummaryFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("data %s: %w", p.Dir, err)
	}
	var sum struct {
		Tokenizer string `json:"tokenizer"`
	}
	if err := json.Unmarshal(b, &sum); err != nil {
		return fmt.Errorf("data %s: %s: %w", p.Dir, tokshard.SummaryFile, err)
	}
	if sum.Tokenizer != "" && sum.Tokenizer != tk.Fingerprint() && (!isByte || strings.HasPrefix(sum.Tokenizer, "bpe-")) {
		return fmt.Errorf("data %s: prepared with tokenizer %s, data.tokenizer is %s (prepare again with --tokenizer, or set data.tokenizer to the one used)", p.Dir, sum.Tokenizer, tk.Fingerprint())
	}
	return nil
}
