package cluster

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// The derivation is HKDF-SHA256 as RFC 5869 specifies it: its test cases
// 1 and 3 (SHA-256, with and without salt and info).
func TestHKDFRFC5869(t *testing.T) {
	h := func(s string) []byte {
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for i, tc := range []struct {
		ikm, salt, info, okm string
	}{
		{"0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b", "000102030405060708090a0b0c", "f0f1f2f3f4f5f6f7f8f9",
			"3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"},
		{"0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b", "", "",
			"8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"},
	} {
		got, err := hkdf.Key(sha256.New, h(tc.ikm), h(tc.salt), string(h(tc.info)), len(tc.okm)/2)
		if err != nil || !bytes.Equal(got, h(tc.okm)) {
			t.Fatalf("case %d: %x, %v", i, got, err)
		}
	}
	// jobKey is that derivation with the token as input key material, no
	// salt and the label as info.
	want, _ := hkdf.Key(sha256.New, []byte("tok"), nil, labelGossip, 32)
	if !bytes.Equal(GossipKey("tok"), want) {
		t.Fatal("GossipKey is not HKDF-SHA256(token, no salt, its label)")
	}
}

// No two uses of a token share a key, none is the token, and each depends
// on the token.
func TestJobKeysDistinct(t *testing.T) {
	for _, tok := range []string{"tok", "0123456789abcdef0123456789abcdef"} {
		cred, _ := hex.DecodeString(ControlCredential(tok))
		dp, _ := hex.DecodeString(DataPlaneKey(tok))
		keys := [][]byte{cred, dp, GossipKey(tok), []byte(tok)}
		for i := range keys {
			for j := range i {
				if bytes.Equal(keys[i], keys[j]) {
					t.Fatalf("token %q: keys %d and %d are equal", tok, i, j)
				}
			}
		}
		if len(cred) != 32 || len(dp) != 32 || len(GossipKey(tok)) != 32 {
			t.Fatalf("key lengths %d %d %d", len(cred), len(dp), len(GossipKey(tok)))
		}
		if ControlCredential(tok) == ControlCredential(tok+"x") || DataPlaneKey(tok) == DataPlaneKey(tok+"x") {
			t.Fatal("a key does not depend on the token")
		}
	}
}

// Gossip refuses a member with another job's token and accepts one with
// the job's (its key is GossipKey of the token on both sides).
func TestGossipWrongKey(t *testing.T) {
	a, err := StartMembership("a", nil, "tok", fastGossip(), zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(100 * time.Millisecond)
	for _, tc := range []struct {
		token string
		ok    bool
	}{{"other", false}, {"tok", true}} {
		b, err := StartMembership("b-"+tc.token, nil, tc.token, fastGossip(), zerolog.Nop(), nil)
		if err != nil {
			t.Fatal(err)
		}
		err = b.Join(a.Addr())
		b.Close(100 * time.Millisecond)
		if (err == nil) != tc.ok || (err != nil && !strings.Contains(err.Error(), "gossip: join")) {
			t.Errorf("token %q: join error %v, want ok=%v", tc.token, err, tc.ok)
		}
	}
}
