package hooks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
)

// recorder runs nothing: it records which steps it was asked to run and fails one of them.
type recorder struct {
	ran    []string
	failAt string
}

func (r *recorder) RunStep(_ context.Context, name, command string, _ io.Writer) error {
	r.ran = append(r.ran, name+": "+command)
	if name == r.failAt {
		return fmt.Errorf("%s: exit status 3", name)
	}
	return nil
}

func TestFire(t *testing.T) {
	tests := []struct {
		name    string
		cmds    []string
		failAt  string
		wantRan []string
		wantErr string
	}{
		{"none", nil, "", nil, ""},
		{"all pass in order", []string{"a", "b"}, "", []string{"after_activate 1/2: a", "after_activate 2/2: b"}, ""},
		{"stops at first failure", []string{"a", "b", "c"}, "after_activate 2/3",
			[]string{"after_activate 1/3: a", "after_activate 2/3: b"}, "after_activate 2/3: exit status 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &recorder{failAt: tt.failAt}
			err := Hooks{AfterActivate: tt.cmds}.Fire(t.Context(), AfterActivate, r, io.Discard)
			if fmt.Sprint(r.ran) != fmt.Sprint(tt.wantRan) {
				t.Errorf("ran %q, want %q", r.ran, tt.wantRan)
			}
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Fire: %v", err)
				}
				return
			}
			var he *Error
			if !errors.As(err, &he) || he.Event != AfterActivate || err.Error() != tt.wantErr {
				t.Fatalf("Fire error = %v, want *Error %q", err, tt.wantErr)
			}
		})
	}
}

func TestFireUnknownEvent(t *testing.T) {
	if err := (Hooks{}).Fire(t.Context(), Event("nope"), &recorder{}, io.Discard); err == nil {
		t.Fatal("Fire of an unknown event succeeded")
	}
}
