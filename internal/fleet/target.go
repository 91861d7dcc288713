// Package fleet ships built releases to target hosts over SSH and swaps them live there
// (SPEC 10). A target needs what every server has: an OpenSSH server with its sftp-server, a
// POSIX shell and tar, a user whose authorized_keys holds slipway's key, and the deploy path.
//
// Host keys are checked strictly against an OpenSSH known_hosts file: an unknown or changed
// key is an error that names the fingerprint the host showed. Everything a target is asked to
// do is bounded in time, and nothing is ever written outside its deploy path.
package fleet

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Target is one host of a fleet: "user@host" or "user@host:port" in the configuration.
type Target struct {
	User string
	Host string
	Port int
}

// Local is the target that names the slipway host itself.
const Local = "local"

// ParseTarget reads "user@host[:port]" (an IPv6 address in brackets: "deploy@[::1]:22").
func ParseTarget(s string) (Target, error) {
	user, hostport, ok := strings.Cut(s, "@")
	if !ok || user == "" {
		return Target{}, fmt.Errorf("%q: want user@host or user@host:port", s)
	}
	if strings.ContainsAny(user, " \t\n:/@") || strings.HasPrefix(user, "-") {
		return Target{}, fmt.Errorf("%q: %q is not a user name", s, user)
	}
	t := Target{User: user, Port: 22}
	host := hostport
	if h, p, err := net.SplitHostPort(hostport); err == nil {
		port, err := strconv.Atoi(p)
		if err != nil || port < 1 || port > 65535 {
			return Target{}, fmt.Errorf("%q: %q is not a port", s, p)
		}
		host, t.Port = h, port
	} else if strings.Contains(hostport, ":") && !strings.HasPrefix(hostport, "[") {
		return Target{}, fmt.Errorf("%q: want user@host or user@host:port", s)
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if host == "" || strings.ContainsAny(host, " \t\n/@") || strings.HasPrefix(host, "-") {
		return Target{}, fmt.Errorf("%q: %q is not a host name", s, host)
	}
	t.Host = host
	return t, nil
}

// String is the target as the configuration names it, with the port only if not 22.
func (t Target) String() string {
	if t.Port == 22 {
		return t.User + "@" + t.Host
	}
	return t.User + "@" + net.JoinHostPort(t.Host, strconv.Itoa(t.Port))
}

// Addr is host:port.
func (t Target) Addr() string { return net.JoinHostPort(t.Host, strconv.Itoa(t.Port)) }

// errTarget marks an error as the target's: what the pusher reads names the host first.
type errTarget struct {
	t   Target
	err error
}

func (e *errTarget) Error() string { return e.t.Host + ": " + e.err.Error() }
func (e *errTarget) Unwrap() error { return e.err }

// HostOf returns the target an error from this package is about, if any.
func HostOf(err error) (Target, bool) {
	var et *errTarget
	if errors.As(err, &et) {
		return et.t, true
	}
	return Target{}, false
}
