package fetcher

import (
	"net/http"
	"net/url"
)

// WithBasicAuth makes s send user and password as HTTP basic auth (RFC
// 7617) with its requests: a device's id and broker secret, which the
// firmcast publisher's GET /images/{digest} accepts. They go only to the
// scheme, host and port of s's URL: a redirect elsewhere is followed
// without them. The client s was made with is not changed (s gets its own
// copy). Call it before s is used; it returns s.
func (s *HTTPSource) WithBasicAuth(user, password string) *HTTPSource {
	u, err := url.Parse(s.url)
	if err != nil {
		return s // the source's first request fails on its URL anyway
	}
	c := *s.client
	base := c.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	c.Transport = &basicAuthTransport{base: base, scheme: u.Scheme, host: u.Host, user: user, password: password}
	s.client = &c
	return s
}

// basicAuthTransport adds basic auth to the requests for one origin.
type basicAuthTransport struct {
	base           http.RoundTripper
	scheme, host   string
	user, password string
}

func (t *basicAuthTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != t.scheme || req.URL.Host != t.host || req.Header.Get("Authorization") != "" {
		return t.base.RoundTrip(req)
	}
	r := req.Clone(req.Context()) // a RoundTripper must not change the request
	r.SetBasicAuth(t.user, t.password)
	return t.base.RoundTrip(r)
}
