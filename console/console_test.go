package console

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/firmcast/firmcast/publisher"
)

func get(t *testing.T, srv *httptest.Server, path string) (*http.Response, string) {
	t.Helper()
	res, err := srv.Client().Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

func TestHandler(t *testing.T) {
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "api "+r.URL.Path) })
	for _, tlsOn := range []bool{false, true} {
		srv := httptest.NewUnstartedServer(Handler(api))
		if tlsOn {
			srv.StartTLS()
		} else {
			srv.Start()
		}
		res, body := get(t, srv, "/")
		if res.StatusCode != 200 || res.Header.Get("Content-Security-Policy") != CSP || res.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("page: %d %v", res.StatusCode, res.Header)
		}
		var login *http.Cookie
		for _, c := range res.Cookies() {
			login = c
		}
		want := publisher.LoginCookie
		if tlsOn {
			want = "__Host-" + want
		}
		if login == nil || login.Name != want || !login.HttpOnly || login.SameSite != http.SameSiteStrictMode || login.Secure != tlsOn || login.Path != "/" {
			t.Errorf("tls %v: sign-in token cookie %+v", tlsOn, login)
		}
		if !strings.Contains(body, `content="`+login.Value+`"`) {
			t.Error("the page does not carry its sign-in token")
		}
		for path, ctype := range map[string]string{"/assets/app.js": "javascript", "/assets/style.css": "text/css"} {
			res, _ := get(t, srv, path)
			if res.StatusCode != 200 || !strings.Contains(res.Header.Get("Content-Type"), ctype) || res.Header.Get("Content-Security-Policy") != CSP {
				t.Errorf("%s: %d %v", path, res.StatusCode, res.Header)
			}
		}
		for _, path := range []string{"/assets/", "/assets/index.html"} {
			if res, _ := get(t, srv, path); res.StatusCode != 404 {
				t.Errorf("%s: %d, want 404", path, res.StatusCode)
			}
		}
		if _, body := get(t, srv, "/api/v1/campaigns"); body != "api /api/v1/campaigns" {
			t.Errorf("API not passed through: %q", body)
		}
		srv.Close()
	}
}

// TestNoInlineCode: the CSP allows no inline script, style or handler, so
// the assets must hold none; nor may they load anything from elsewhere.
func TestNoInlineCode(t *testing.T) {
	if strings.Contains(CSP, "unsafe-inline") || strings.Contains(CSP, "unsafe-eval") {
		t.Fatalf("CSP %q", CSP)
	}
	bad := []*regexp.Regexp{
		regexp.MustCompile(`<script(\s[^>]*)?>\s*[^<\s]`), // inline script
		regexp.MustCompile(`\sstyle=`),
		regexp.MustCompile(`<style`),
		regexp.MustCompile(`\son[a-z]+=`),
		regexp.MustCompile(`https?://`),
		regexp.MustCompile(`\.innerHTML|insertAdjacentHTML|eval\(|new Function`),
		regexp.MustCompile(`localStorage|sessionStorage`),
	}
	err := fs.WalkDir(assets, "assets", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, _ := fs.ReadFile(assets, path)
		for _, re := range bad {
			if loc := re.FindIndex(b); loc != nil {
				t.Errorf("%s: %q", path, b[loc[0]:min(loc[1]+20, len(b))])
			}
		}
		for _, m := range regexp.MustCompile(`<script[^>]*>`).FindAll(b, -1) {
			if !strings.Contains(string(m), `src="/assets/`) {
				t.Errorf("%s: script %s not from /assets/", path, m)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestEveryControlLabelled: every input and select of the page and of
// the script's views has a label (by for=id).
func TestEveryControlLabelled(t *testing.T) {
	for _, name := range []string{"assets/index.html", "assets/app.js"} {
		b, _ := fs.ReadFile(assets, name)
		s := string(b)
		ids := regexp.MustCompile(`(?:<input[^>]*\sid="([^"]+)"|el\('(?:input|select)', \{ id: '([^']+)')`).FindAllStringSubmatch(s, -1)
		if len(ids) == 0 {
			t.Fatalf("%s: no controls found", name)
		}
		for _, m := range ids {
			id := m[1] + m[2]
			if !strings.Contains(s, `for="`+id+`"`) && !strings.Contains(s, `for: '`+id+`'`) && !strings.Contains(s, `field('`+id+`'`) {
				t.Errorf("%s: control %s has no label", name, id)
			}
		}
	}
}
