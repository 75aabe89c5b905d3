package collective

import (
	"bytes"
	"errors"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	h := Header{Op: OpAllToAllV, Tag: Tag{Group: 0xdeadbeef, Seq: 1<<63 | 5, Step: 7}, Count: 42, Time: -3}
	var buf bytes.Buffer
	if err := WriteFrame(&buf, h, []byte("ab"), nil, []byte("cde")); err != nil {
		t.Fatal(err)
	}
	got, payload, err := ReadFrame(&buf, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	h.Len = 5
	if got != h || string(payload) != "abcde" {
		t.Fatalf("got %+v %q, want %+v %q", got, payload, h, "abcde")
	}
}

func TestDecodeHeaderRejects(t *testing.T) {
	good := make([]byte, HeaderSize)
	EncodeHeader(good, Header{Op: OpAllReduce, Len: 10})
	mutate := map[string]func(b []byte){
		"magic":    func(b []byte) { b[0] ^= 1 },
		"op0":      func(b []byte) { b[4] = 0 },
		"opbig":    func(b []byte) { b[4] = 200 },
		"reserved": func(b []byte) { b[13] = 1 },
		"len":      func(b []byte) { b[47] = 0xff },
	}
	for name, m := range mutate {
		b := append([]byte(nil), good...)
		m(b)
		if _, err := DecodeHeader(b, 1<<20); !errors.Is(err, ErrBadFrame) {
			t.Errorf("%s: want ErrBadFrame, got %v", name, err)
		}
	}
	if _, err := DecodeHeader(good[:10], 1<<20); !errors.Is(err, ErrBadFrame) {
		t.Errorf("short header: want ErrBadFrame, got %v", err)
	}
}

// The decoder must never panic and must never return more payload than the
// input holds, whatever the bytes.
func FuzzReadFrame(f *testing.F) {
	var buf bytes.Buffer
	WriteFrame(&buf, Header{Op: OpAllReduce, Tag: Tag{Group: 1, Seq: 2}, Count: 3}, []byte{1, 2, 3, 4})
	f.Add(buf.Bytes())
	buf.Reset()
	WriteFrame(&buf, Header{Op: OpAbort}, []byte("why"))
	f.Add(buf.Bytes())
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0xff}, HeaderSize))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		for {
			h, payload, err := ReadFrame(r, 1<<16)
			if err != nil {
				return
			}
			if uint64(len(payload)) != h.Len {
				t.Fatalf("payload %d bytes, header says %d", len(payload), h.Len)
			}
			if h.Op == OpInvalid || h.Op >= opLimit {
				t.Fatalf("accepted op %d", h.Op)
			}
			// Re-encoding an accepted frame reproduces its bytes.
			var out bytes.Buffer
			WriteFrame(&out, h, payload)
			h2, p2, err := ReadFrame(&out, 1<<16)
			if err != nil || h2 != h || !bytes.Equal(p2, payload) {
				t.Fatalf("round trip: %+v %v", h2, err)
			}
		}
	})
}
