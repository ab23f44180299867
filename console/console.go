package console

import (
	"bytes"
	"embed"
	"html/template"
	"io/fs"
	"net/http"
	"time"

	"github.com/firmcast/firmcast/publisher"
)

//go:embed assets
var assets embed.FS

var page = template.Must(template.ParseFS(assets, "assets/index.html"))

// CSP is the Content-Security-Policy of every console answer: this
// origin's scripts, styles, images and connections only, no inline script
// or style, no frames, no plugins, forms posted nowhere else.
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// loginTokenLife is how long a console page's sign-in token lasts.
const loginTokenLife = time.Hour

// Handler serves the console at / and its assets under /assets/, and
// passes every other request to api (the publisher's Handler).
func Handler(api http.Handler) http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(assets, "assets")
	files := http.FileServerFS(static)
	mux.HandleFunc("GET /{$}", serveIndex)
	mux.Handle("GET /assets/", secure(http.StripPrefix("/assets/", noIndex(files))))
	mux.Handle("/", api)
	return mux
}

// secure sets the console's security headers.
func secure(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		setHeaders(w)
		h.ServeHTTP(w, r)
	})
}

func setHeaders(w http.ResponseWriter) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", CSP)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Cross-Origin-Opener-Policy", "same-origin")
}

// noIndex refuses directory listings and index.html (the page is served
// at / only, with its token).
func noIndex(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "" || r.URL.Path[len(r.URL.Path)-1] == '/' || r.URL.Path == "index.html" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Cache-Control", "no-cache")
		h.ServeHTTP(w, r)
	})
}

// serveIndex serves the page with a fresh sign-in token, set in its
// cookie as well.
func serveIndex(w http.ResponseWriter, r *http.Request) {
	tok := publisher.NewLoginToken()
	var b bytes.Buffer
	if err := page.Execute(&b, struct{ LoginToken string }{tok}); err != nil {
		http.Error(w, "console page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	setHeaders(w)
	http.SetCookie(w, publisher.NewCookie(publisher.LoginCookie, tok, r, loginTokenLife))
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(b.Bytes())
}
