package builder

import "testing"

func TestHasEntry(t *testing.T) {
	t.Parallel()
	tests := []struct {
		env  string
		kv   string
		want bool
	}{
		{"A=1\x00B=2\x00", "B=2", true},
		{"A=1\x00B=2\x00", "A=1", true},
		{"A=1\x00B=2", "B=2", true},
		{"A=1\x00B=22\x00", "B=2", false},
		{"A=1\x00XB=2\x00", "B=2", false},
		{"A=1\x00B=2\x00", "B=", false},
		{"A=1\x00B=2 3\x00", "B=2", false},
		{"", "B=2", false},
		{"\x00\x00B=2\x00", "B=2", true},
	}
	for _, tt := range tests {
		if got := hasEntry([]byte(tt.env), tt.kv); got != tt.want {
			t.Errorf("hasEntry(%q, %q) = %v, want %v", tt.env, tt.kv, got, tt.want)
		}
	}
}
