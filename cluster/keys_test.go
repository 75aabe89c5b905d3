package cluster

import (
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/collective"
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

// connectPair connects rank 0 through a TCP data plane with job token
// token and rank 1 with collective.DialMesh given key as is (what a peer
// holding key, whatever it derived it from, can do); it returns rank 1's
// error.
func connectPair(t *testing.T, token, key string) error {
	t.Helper()
	dp, err := NewTCPDataPlane("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	ln, err := collective.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addrs := []string{dp.Addr(), ln.Addr().String()}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if tr, err := dp.Connect(ctx, 0, addrs, token, DataPlaneLimits{}); err == nil {
			tr.Close()
		}
	}()
	tr, err := collective.DialMesh(ctx, ln, collective.TCPConfig{Rank: 1, Addrs: addrs, Token: key})
	if err == nil {
		tr.Close()
	} else {
		cancel() // rank 0 keeps waiting for a rank it refused
	}
	wg.Wait()
	return err
}

// The data plane's handshake key is DataPlaneKey of the job token: a peer
// holding it connects; one holding the job token itself (say, from a
// captured cleartext control plane of an older version), the control
// credential, the gossip key or another job's key is refused.
func TestDataPlaneKeyRefusals(t *testing.T) {
	tok := "job-token"
	if err := connectPair(t, tok, DataPlaneKey(tok)); err != nil {
		t.Fatalf("the data-plane key: %v", err)
	}
	for name, key := range map[string]string{"the job token": tok, "the control credential": ControlCredential(tok),
		"the gossip key": string(GossipKey(tok)), "another job's key": DataPlaneKey("other")} {
		err := connectPair(t, tok, key)
		if !errors.Is(err, collective.ErrRefused) {
			t.Errorf("%s: %v, want a handshake refusal", name, err)
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
