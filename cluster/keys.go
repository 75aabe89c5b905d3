package cluster

import (
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/hex"
)

// A job's token is its one secret. No use of it takes the token itself:
// each derives its own key with HKDF-SHA256 (RFC 5869) under its own label
// (docs/control-plane.md#keys), so a key that leaks from one plane (a
// control-plane credential seen on a cleartext connection, say) opens
// neither of the others:
//
//   - the control-plane credential, which workers and tools present in
//     every gRPC request (the coordinator compares it in constant time);
//   - the data-plane key, the HMAC key of the collective handshake;
//   - the gossip key, memberlist's AES-256-GCM key.
const (
	labelControl   = "moetrain control-plane credential v1"
	labelDataPlane = "moetrain data-plane hmac key v1"
	labelGossip    = "moetrain gossip key v1"
)

// jobKey derives n bytes for label from token. The token is the input
// key material as is (no salt): RandomToken's are uniformly random; a
// hand-picked token is only as strong as its entropy.
func jobKey(token, label string, n int) []byte {
	k, err := hkdf.Key(sha256.New, []byte(token), nil, label, n)
	if err != nil { // only for n > 255·32
		panic("cluster: hkdf: " + err.Error())
	}
	return k
}

// ControlCredential is what the control plane's requests carry in their
// token field for job token token (hex of 32 derived bytes).
func ControlCredential(token string) string {
	return hex.EncodeToString(jobKey(token, labelControl, 32))
}

// DataPlaneKey is the data plane's handshake key for job token token (hex
// of 32 derived bytes), what collective.TCPConfig.Token is given.
func DataPlaneKey(token string) string { return hex.EncodeToString(jobKey(token, labelDataPlane, 32)) }

// GossipKey is the 32-byte AES-256 gossip key for job token token, so only
// holders of the token can read or join the job's gossip.
func GossipKey(token string) []byte { return jobKey(token, labelGossip, 32) }
