package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestBenchMoE runs `bench moe` on 2 rank processes of a tiny model over
// shaped links: a row per configuration, the anchor first, the chunk count
// each used; bad flags are refused with errors naming them.
func TestBenchMoE(t *testing.T) {
	cfg := tinyRoutingConfig(t, "")
	t.Setenv(testAsCoordinatorEnv, "1")
	run := func(args ...string) (string, error) {
		cmd := newBenchMoECmd()
		var out, errOut bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&errOut)
		cmd.SetArgs(args)
		err := cmd.ExecuteContext(t.Context())
		return out.String(), err
	}
	out, err := run("--config", cfg, "--ep", "2", "--steps", "2", "--warmup", "1", "--rounds", "1", "--tokens", "16",
		"--link-bw", "50MB/s", "--configs", "fp32,fp8+c2,fp32+c2+dcca2")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"links 50 MB/s", "fp32 ", "fp8+c2 ", "[2]", "fp32+c2+dcca2 "} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	for _, bad := range [][]string{{"--configs", "fp16"}, {"--link-bw", "fast"}, {"--ep", "two"}, {"--rounds", "0"}} {
		if _, err := run(append([]string{"--config", cfg, "--ep", "2"}, bad...)...); err == nil || !strings.Contains(err.Error(), strings.TrimPrefix(bad[0], "--")) {
			t.Errorf("%v: error %v", bad, err)
		}
	}
}
