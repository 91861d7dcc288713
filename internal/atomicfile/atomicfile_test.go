package atomicfile

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

func TestWriteFile(t *testing.T) {
	old := unix.Umask(0o077)
	t.Cleanup(func() { unix.Umask(old) })
	dir := t.TempDir()
	name := filepath.Join(dir, "state.json")
	tests := []struct {
		data string
		perm os.FileMode
	}{
		{"first", 0o644},
		{"second, longer than the first", 0o600},
		{"", 0o640},
	}
	for _, tt := range tests {
		if err := WriteFile(name, []byte(tt.data), tt.perm); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(name)
		if err != nil || string(b) != tt.data {
			t.Errorf("content %q, %v; want %q", b, err, tt.data)
		}
		if fi, err := os.Stat(name); err != nil || fi.Mode().Perm() != tt.perm {
			t.Errorf("mode %v, %v; want %v", fi.Mode(), err, tt.perm)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 1 {
			t.Errorf("entries left in the dir: %v", entries)
		}
	}
	if err := WriteFile(filepath.Join(dir, "missing", "x"), nil, 0o644); err == nil {
		t.Error("WriteFile into a missing dir succeeded")
	}
}

func TestRemoveStale(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{".state.json.tmp-123", ".x.tmp-9", "state.json", "notes.tmp-1", ".hidden"} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := RemoveStale(dir); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{".hidden", "notes.tmp-1", "state.json"}; !slices.Equal(names, want) {
		t.Errorf("left %v, want %v", names, want)
	}
}
