package builder

import (
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

func TestCopyLines(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"empty", "", nil},
		{"one line", "ab\n", []string{"ab\n"}},
		{"no final newline", "ab\ncd", []string{"ab\n", "cd\n"}},
		{"exactly max", "abcd\n", []string{"abcd\n"}},
		{"max plus one", "abcde\n", []string{"abcd\n", "e\n"}},
		{"twice max", "abcdefgh\n", []string{"abcd\n", "efgh\n"}},
		{"twice max, no newline", "abcdefgh", []string{"abcd\n", "efgh\n"}},
		{"long then short", "abcdefghij\nk\n", []string{"abcd\n", "efgh\n", "ij\n", "k\n"}},
		{"empty lines", "\n\na\n", []string{"\n", "\n", "a\n"}},
		{"carriage return kept", "a\rb\n", []string{"a\rb\n"}},
	}
	readers := map[string]func(string) io.Reader{
		"whole":    func(s string) io.Reader { return strings.NewReader(s) },
		"one byte": func(s string) io.Reader { return iotest.OneByteReader(strings.NewReader(s)) },
		"half":     func(s string) io.Reader { return iotest.HalfReader(strings.NewReader(s)) },
	}
	for _, tt := range tests {
		for rname, reader := range readers {
			t.Run(tt.name+"/"+rname, func(t *testing.T) {
				t.Parallel()
				var out recorder
				werr, rerr := copyLines(&out, reader(tt.in), 4)
				if werr != nil || rerr != nil {
					t.Fatalf("copyLines = %v, %v", werr, rerr)
				}
				if got := out.Lines(); !slices.Equal(got, tt.want) {
					t.Errorf("lines = %q, want %q", got, tt.want)
				}
			})
		}
	}
}

func TestCopyLinesErrors(t *testing.T) {
	t.Parallel()
	broken := errors.New("broken")
	t.Run("writer fails, reader drained", func(t *testing.T) {
		t.Parallel()
		var out failing
		src := strings.NewReader(strings.Repeat("line\n", 1000))
		werr, rerr := copyLines(&out, src, 4)
		if werr == nil || rerr != nil {
			t.Fatalf("copyLines = %v, %v, want a write error only", werr, rerr)
		}
		if out.writes != 1 || src.Len() != 0 {
			t.Errorf("%d writes, %d bytes unread, want 1 write and all read", out.writes, src.Len())
		}
	})
	t.Run("reader fails, partial line flushed", func(t *testing.T) {
		t.Parallel()
		var out recorder
		src := io.MultiReader(strings.NewReader("a\nb"), iotest.ErrReader(broken))
		werr, rerr := copyLines(&out, src, 4)
		if werr != nil || !errors.Is(rerr, broken) {
			t.Fatalf("copyLines = %v, %v, want the read error", werr, rerr)
		}
		if got, want := out.Lines(), []string{"a\n", "b\n"}; !slices.Equal(got, want) {
			t.Errorf("lines = %q, want %q", got, want)
		}
	})
}
