package testkit

import (
	"os"
	"path/filepath"
	"testing"
)

// Golden compares got with the golden file at path, or with update
// rewrites the file (creating its folder); how names the command that
// rewrites it in the error when the file is missing.
func Golden(t *testing.T, path, got string, update bool, how string) {
	t.Helper()
	if update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run %s)", err, how)
	}
	if string(want) != got {
		t.Errorf("output differs from %s:\n--- got\n%s--- want\n%s", path, got, want)
	}
}
