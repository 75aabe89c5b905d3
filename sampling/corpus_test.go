package sampling

import (
	"strings"
	"testing"
)

func TestDefaultCorpus(t *testing.T) {
	c, err := DefaultCorpus()
	if err != nil {
		t.Fatal(err)
	}
	nt, nv := TotalTokens(c.Train), TotalTokens(c.Val)
	frac := float64(nv) / float64(nt+nv)
	t.Logf("train %d docs %d tokens, val %d docs %d tokens (%.1f%%)", len(c.Train), nt, len(c.Val), nv, 100*frac)
	if frac < 0.02 || frac > 0.10 {
		t.Errorf("validation share %.3f, want about 5%%", frac)
	}
	long, short := 0, 0
	for _, d := range append(append([]Document(nil), c.Train...), c.Val...) {
		if len(d.Tokens) == 0 {
			t.Fatalf("empty document %s", d.Name)
		}
		if len(d.Tokens) > 2048 {
			long++
		}
		if len(d.Tokens) < 256 {
			short++
		}
	}
	if long < 50 || short < 1000 {
		t.Errorf("length spread: %d docs > 2048 tokens, %d < 256; want both plentiful", long, short)
	}
	trainFiles := map[string]bool{}
	for _, d := range c.Train {
		trainFiles[d.Name[:strings.LastIndexByte(d.Name, ':')]] = true
	}
	for _, d := range c.Val {
		if trainFiles[d.Name[:strings.LastIndexByte(d.Name, ':')]] {
			t.Fatalf("file of validation document %s also has training documents", d.Name)
		}
	}
	if !strings.Contains(DefaultCorpusLicense(), "Redistribution") {
		t.Error("embedded licence text missing")
	}
}

func TestDecodeCorpusErrors(t *testing.T) {
	for name, blob := range map[string][]byte{
		"no magic":  []byte("hello"),
		"bad gzip":  []byte(corpusMagic + "not gzip"),
		"truncated": append([]byte(nil), gostdBlob[:len(gostdBlob)/2]...),
	} {
		if _, err := decodeCorpus(blob); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
}

func TestByteTokenizeRoundTrip(t *testing.T) {
	s := []byte("héllo\x00\xff")
	ids := ByteTokenize(s)
	if len(ids) != len(s) || ids[len(ids)-1] != 255 {
		t.Fatalf("ids %v", ids)
	}
	if string(ByteDetokenize(ids)) != string(s) {
		t.Fatal("round trip changed the bytes")
	}
}
