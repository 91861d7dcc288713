package releaser

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestTargets(t *testing.T) {
	e := newEnv(t, Config{})
	if m, err := e.r.Targets(); err != nil || len(m) != 0 {
		t.Fatalf("Targets of a new environment = %v, %v", m, err)
	}
	if err := e.r.PauseTarget("deploy@web2", "alice", "disk"); err != nil {
		t.Fatal(err)
	}
	if err := e.r.RecordTargetsLive(map[string]string{"deploy@web1": "abc", "deploy@web2": "def"}); err != nil {
		t.Fatal(err)
	}
	m, err := e.r.Targets()
	if err != nil {
		t.Fatal(err)
	}
	if p := m["deploy@web2"].Paused; p == nil || p.By != "alice" || p.Message != "disk" || m["deploy@web2"].Live != "def" {
		t.Errorf("web2 = %+v", m["deploy@web2"])
	}
	if m["deploy@web1"].Live != "abc" || m["deploy@web1"].Paused != nil || m["deploy@web1"].LiveAt.IsZero() {
		t.Errorf("web1 = %+v", m["deploy@web1"])
	}
	if err := e.r.ResumeTarget("deploy@web2"); err != nil {
		t.Fatal(err)
	}
	if err := e.r.ResumeTarget("deploy@web2"); !errors.Is(err, ErrNotPaused) {
		t.Errorf("ResumeTarget twice = %v", err)
	}
	if m, _ := e.r.Targets(); m["deploy@web2"].Paused != nil || m["deploy@web2"].Live != "def" {
		t.Errorf("web2 after resume = %+v", m["deploy@web2"])
	}
	// A damaged record is an error, never "nothing paused".
	if err := os.WriteFile(filepath.Join(e.r.Path(), targetsFile), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	var ce *CorruptError
	if _, err := e.r.Targets(); !errors.As(err, &ce) {
		t.Errorf("Targets of a damaged record = %v", err)
	}
}
