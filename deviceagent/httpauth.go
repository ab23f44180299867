package deviceagent

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/firmcast/firmcast/fetcher"
)

// HTTPAuth is a device's credentials for image downloads over HTTP: the
// firmcast publisher's GET /images/{digest} lets a device in with its id
// and broker secret as HTTP basic auth (publisher.ImageAccessKey, the
// default).
type HTTPAuth struct {
	// URLPrefix selects the sources that get the credentials: those whose
	// URL starts with it. It must be an http or https URL with a path
	// ending in "/", normally the publisher's image URL
	// ("https://fw.example.com/images/"), so that no other host, and no
	// other path of the host, is sent the device's secret. Required.
	URLPrefix string
	// Username and Password: the device's id and broker secret.
	Username, Password string
}

// check reports a prefix that could send the credentials to someone else.
func (h *HTTPAuth) check() error {
	if h == nil {
		return nil
	}
	u, err := url.Parse(h.URLPrefix)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
		!strings.HasSuffix(u.Path, "/") || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("HTTP auth URL prefix %q: want http(s)://host/path/ (a path ending in /, no user, query or fragment)", h.URLPrefix)
	}
	return nil
}

// httpSource returns the HTTP source of image URL u, sending the
// device's credentials when u lies under Config.HTTPAuth.URLPrefix.
func (a *Agent) httpSource(u string, price float64) *fetcher.HTTPSource {
	s := fetcher.NewHTTPSource(u, price, a.cfg.HTTPClient)
	if h := a.cfg.HTTPAuth; h != nil && strings.HasPrefix(u, h.URLPrefix) {
		s.WithBasicAuth(h.Username, h.Password)
	}
	return s
}
