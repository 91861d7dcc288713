package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/rogpeppe/go-internal/testscript"
)

// The dashboard's end-to-end tests drive Debian's chromium, headless, with chromedp: one
// browser per script, started at its first browser command and closed at its end.
//
//	browser open URL              navigate; print the HTTP status and the page's text
//	! browser open URL            the page must not load (nothing listens): print why
//	browser click SELECTOR        click (CSS) and wait for the page it loads; print as open
//	browser fill SELECTOR TEXT    type TEXT into a field
//	browser text SELECTOR         print the element's text
//	browser waittext SELECTOR RE  wait until the element's text matches RE; print how long
//	browser eval JS               print the JSON of the expression's value (promises awaited)
//	browser cookies               print each cookie: NAME httponly=B samesite=S secure=B
//	browser shot NAME             a full-page PNG, $WORK/NAME.png; with $SLIPWAY_SCREENSHOTS
//	                              set (make screenshots), there too
var (
	browsersMu sync.Mutex
	browsers   = map[*testscript.TestScript]context.Context{}
)

// chromium is the browser's path: $CHROMIUM or Debian's chromium.
func chromium() (string, error) {
	for _, p := range []string{os.Getenv("CHROMIUM"), "chromium", "/usr/bin/chromium"} {
		if p == "" {
			continue
		}
		if path, err := exec.LookPath(p); err == nil {
			return path, nil
		}
	}
	return "", fmt.Errorf("no chromium (apt-get install chromium; .ci/run installs it)")
}

// browserOf is the script's browser, started at the first call.
func browserOf(ts *testscript.TestScript) context.Context {
	browsersMu.Lock()
	defer browsersMu.Unlock()
	if ctx, ok := browsers[ts]; ok {
		return ctx
	}
	path, err := chromium()
	ts.Check(err)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox, // chromium refuses to run as root without it
		chromedp.DisableGPU,
		chromedp.WindowSize(1200, 800),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-quic", true),
		chromedp.UserDataDir(ts.MkAbs("chromium/profile")), // in the script's own directory, as
		chromedp.Env("HOME="+ts.MkAbs("chromium/home"), // is all else it writes
			"XDG_CONFIG_HOME="+ts.MkAbs("chromium/config"), "XDG_CACHE_HOME="+ts.MkAbs("chromium/cache")),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	// The first action starts the browser; its context (no deadline) is the browser's life.
	if err := chromedp.Do(ctx); err != nil {
		cancel()
		cancelAlloc()
		ts.Fatalf("start chromium: %v", err)
	}
	browsers[ts] = ctx
	ts.Defer(func() {
		cancel()
		cancelAlloc()
		browsersMu.Lock()
		delete(browsers, ts)
		browsersMu.Unlock()
	})
	return ctx
}

func cmdBrowser(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) == 0 || (neg && args[0] != "open") {
		ts.Fatalf("usage: browser open|click|fill|text|waittext|eval|cookies|shot ... (only open may be negated)")
	}
	bctx := browserOf(ts)
	ctx, cancel := context.WithTimeout(bctx, waitFor)
	defer cancel()
	out := ts.Stdout()
	page := func(resp *network.Response, err error) {
		ts.Check(err)
		text, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("body")))
		ts.Check(err)
		fmt.Fprintf(out, "status %d\n%s\n", resp.Status, text)
	}
	want := func(n int, usage string) {
		if len(args) != n+1 {
			ts.Fatalf("usage: browser %s", usage)
		}
	}
	switch args[0] {
	case "open":
		want(1, "open URL")
		resp, err := chromedp.RunResponse(ctx, chromedp.Navigate(args[1]))
		if neg {
			if err == nil {
				ts.Fatalf("browser open %s: status %d; want no page", args[1], resp.Status)
			}
			fmt.Fprintf(out, "%v\n", err)
			return
		}
		page(resp, err)
	case "click":
		want(1, "click SELECTOR")
		// The click is dispatched from the page after the call returns: a click that
		// navigates at once would otherwise destroy the page's context under the call
		// ("Cannot find context with specified id").
		sel, err := json.Marshal(args[1])
		ts.Check(err)
		js := fmt.Sprintf(`(() => { const el = document.querySelector(%s); if (!el) return false; setTimeout(() => el.click(), 0); return true; })()`, sel)
		ts.Check(chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(args[1]))))
		page(chromedp.RunResponse(ctx, func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
			found, err := chromedp.Evaluate[bool](js)(ctx, t)
			if err == nil && !found {
				err = fmt.Errorf("no %s", args[1])
			}
			return chromedp.Void{}, err
		}))
	case "fill":
		want(2, "fill SELECTOR TEXT")
		ts.Check(chromedp.Do(ctx, chromedp.SendKeys(chromedp.CSS(args[1]), args[2])))
	case "text":
		want(1, "text SELECTOR")
		text, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(args[1])))
		ts.Check(err)
		fmt.Fprintln(out, text)
	case "waittext":
		want(2, "waittext SELECTOR REGEXP")
		re, err := regexp.Compile(args[2])
		ts.Check(err)
		start := time.Now()
		for {
			text, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(args[1])))
			if err == nil && re.MatchString(text) {
				fmt.Fprintf(out, "matched after %s\n", time.Since(start).Round(time.Millisecond))
				return
			}
			if ctx.Err() != nil {
				ts.Fatalf("browser waittext %s %s: not within %s; text: %q (%v)", args[1], args[2], waitFor, text, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	case "eval":
		want(1, "eval JS")
		v, err := chromedp.Run(ctx, chromedp.Evaluate[any](args[1], chromedp.EvalAwaitPromise))
		ts.Check(err)
		b, err := json.Marshal(v)
		ts.Check(err)
		fmt.Fprintf(out, "%s\n", b)
	case "cookies":
		want(0, "cookies")
		res, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{})
		ts.Check(err)
		for _, c := range res.Cookies {
			fmt.Fprintf(out, "%s httponly=%v samesite=%s secure=%v\n", c.Name, c.HTTPOnly, c.SameSite, c.Secure)
		}
	case "shot":
		want(1, "shot NAME")
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		ts.Check(err)
		ts.Check(os.WriteFile(ts.MkAbs(args[1]+".png"), png, 0o644))
		if dir := os.Getenv("SLIPWAY_SCREENSHOTS"); dir != "" {
			ts.Check(os.WriteFile(filepath.Join(dir, args[1]+".png"), png, 0o644))
		}
	default:
		ts.Fatalf("browser: unknown %q", strings.Join(args, " "))
	}
}
