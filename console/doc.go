// Package console is the operator console: a web dashboard that
// `firmcast serve` serves at / beside the publisher's API, live over the
// API's server-sent events.
//
// What it is made of:
//
//   - One page (assets/index.html, a template) and one script
//     (assets/app.js, plain JavaScript, no framework, no build step) and
//     one style sheet, all embedded with go:embed: nothing is loaded from
//     elsewhere at run time and no Node toolchain is needed to build or
//     test it. The script builds the DOM with textContent only (no HTML
//     from data), routes on the URL fragment (#/fleet, #/campaigns,
//     #/campaign/<id>, #/device/<id>, #/images), and talks to /api/v1 only.
//   - Every answer of the console carries a Content-Security-Policy
//     without 'unsafe-inline' (scripts and styles from this origin only,
//     no frames, no other origin to connect to), nosniff, no referrer and
//     no framing.
//
// Sign-in and sessions are the publisher's (publisher/sessions.go): the
// page holds a pre-session CSRF token (also in an HttpOnly cookie) that
// the sign-in must send back; the API key is posted once and kept nowhere
// in the browser; the session cookie is HttpOnly, SameSite=Strict and,
// under TLS, Secure with the __Host- prefix. Every change the console
// makes carries the session's CSRF token (X-CSRF-Token). The console shows
// an action only to a key whose scope allows it; the server checks the
// scope of every call anyway.
//
// Live pages follow GET /api/v1/events with EventSource, which resumes
// after a dropped connection with Last-Event-ID by itself; the server
// coalesces updates, and the page applies them to what it shows (counts,
// the visible device rows) without reloading.
package console
