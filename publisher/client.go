package publisher

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Client calls the HTTP API of a firmcast server. It is what the CLI uses,
// and any Go service may. Safe for concurrent use.
type Client struct {
	// BaseURL is the server's address, e.g. "http://127.0.0.1:8080".
	BaseURL string
	// Key is the API key sent as "Authorization: Bearer".
	Key string
	// HTTP is the client used; nil means http.DefaultClient.
	HTTP *http.Client
}

// APIError is an error answer of the API. It matches (errors.Is) the
// sentinel of its status: ErrUnauthorized, ErrForbidden, ErrNotFound,
// ErrState for conflicts, ErrTooLarge, ErrInvalid for other 4xx.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return fmt.Sprintf("server: %s (HTTP %d)", e.Message, e.Status) }

// Is maps the HTTP status to the package's sentinels.
func (e *APIError) Is(target error) bool {
	switch e.Status {
	case http.StatusUnauthorized:
		return target == ErrUnauthorized
	case http.StatusForbidden:
		return target == ErrForbidden
	case http.StatusNotFound:
		return target == ErrNotFound
	case http.StatusConflict:
		return target == ErrState
	case http.StatusRequestEntityTooLarge:
		return target == ErrTooLarge
	}
	return e.Status >= 400 && e.Status < 500 && target == ErrInvalid
}

func (c *Client) do(ctx context.Context, method, path string, body io.Reader, ctype string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.BaseURL, "/")+path, body)
	if err != nil {
		return fmt.Errorf("publisher client: %w", err)
	}
	if c.Key != "" {
		req.Header.Set("Authorization", "Bearer "+c.Key)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	res, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("publisher client: %s %s: %w", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("publisher client: %s %s: %w", method, path, err)
	}
	if res.StatusCode >= 400 {
		var er ErrorReply
		if json.Unmarshal(b, &er) != nil || er.Error == "" {
			er.Error = strings.TrimSpace(string(b))
		}
		return &APIError{Status: res.StatusCode, Message: er.Error}
	}
	if out == nil || res.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("publisher client: %s %s: bad answer: %w", method, path, err)
	}
	return nil
}

func (c *Client) doJSON(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("publisher client: %w", err)
		}
		body = bytes.NewReader(b)
	}
	return c.do(ctx, method, path, body, "application/json", out)
}

// UploadImage uploads an image; the server answers with its metadata.
func (c *Client) UploadImage(ctx context.Context, name string, r io.Reader) (Image, error) {
	return c.UploadImageWith(ctx, ImageUpload{Name: name}, r)
}

// UploadImageWith uploads an image with its name, version and security
// version (see Publisher.UploadImageWith).
func (c *Client) UploadImageWith(ctx context.Context, up ImageUpload, r io.Reader) (Image, error) {
	q := url.Values{"name": {up.Name}}
	if up.Version != "" {
		q.Set("version", up.Version)
	}
	if up.SecurityVersion != 0 {
		q.Set("security_version", strconv.FormatUint(up.SecurityVersion, 10))
	}
	if len(up.Recipients) > 0 {
		q.Set("encrypt", "true")
		q.Set("recipients", strings.Join(up.Recipients, ","))
	}
	var img Image
	err := c.do(ctx, "POST", "/api/v1/images?"+q.Encode(), r, "application/octet-stream", &img)
	return img, err
}

// Images lists stored images.
func (c *Client) Images(ctx context.Context) ([]Image, error) {
	var v []Image
	return v, c.doJSON(ctx, "GET", "/api/v1/images", nil, &v)
}

// Image returns one image's metadata.
func (c *Client) Image(ctx context.Context, digest string) (Image, error) {
	var v Image
	return v, c.doJSON(ctx, "GET", "/api/v1/images/"+url.PathEscape(digest), nil, &v)
}

// AddDevice registers a device; the answer holds its secret.
func (c *Client) AddDevice(ctx context.Context, d NewDevice) (NewDeviceReply, error) {
	var v NewDeviceReply
	return v, c.doJSON(ctx, "POST", "/api/v1/devices", d, &v)
}

// Devices lists registered devices.
func (c *Client) Devices(ctx context.Context) ([]Device, error) {
	var v []Device
	return v, c.doJSON(ctx, "GET", "/api/v1/devices", nil, &v)
}

// Device returns a device with its campaign history.
func (c *Client) Device(ctx context.Context, id string) (DeviceDetail, error) {
	var v DeviceDetail
	return v, c.doJSON(ctx, "GET", "/api/v1/devices/"+url.PathEscape(id), nil, &v)
}

// RemoveDevice deletes a device.
func (c *Client) RemoveDevice(ctx context.Context, id string) error {
	return c.doJSON(ctx, "DELETE", "/api/v1/devices/"+url.PathEscape(id), nil, nil)
}

// GroupAdd puts devices in a group; GroupRemove takes them out.
func (c *Client) GroupAdd(ctx context.Context, group string, devices []string) error {
	return c.doJSON(ctx, "POST", "/api/v1/groups/"+url.PathEscape(group)+"/devices", GroupRequest{Devices: devices}, nil)
}

// GroupRemove takes devices out of a group.
func (c *Client) GroupRemove(ctx context.Context, group string, devices []string) error {
	return c.doJSON(ctx, "DELETE", "/api/v1/groups/"+url.PathEscape(group)+"/devices", GroupRequest{Devices: devices}, nil)
}

// CreateCampaign creates (and with r.Start, starts) a campaign.
func (c *Client) CreateCampaign(ctx context.Context, r CampaignRequest) (Status, error) {
	var v Status
	return v, c.doJSON(ctx, "POST", "/api/v1/campaigns", r, &v)
}

// CampaignAction runs start, pause, resume or abort.
func (c *Client) CampaignAction(ctx context.Context, id, action string) (Status, error) {
	var v Status
	return v, c.doJSON(ctx, "POST", "/api/v1/campaigns/"+url.PathEscape(id)+"/"+url.PathEscape(action), nil, &v)
}

// Campaign returns a campaign's status.
func (c *Client) Campaign(ctx context.Context, id string) (Status, error) {
	var v Status
	return v, c.doJSON(ctx, "GET", "/api/v1/campaigns/"+url.PathEscape(id), nil, &v)
}

// Campaigns lists campaigns.
func (c *Client) Campaigns(ctx context.Context) ([]Status, error) {
	var v []Status
	return v, c.doJSON(ctx, "GET", "/api/v1/campaigns", nil, &v)
}

// CreateAPIKey makes a key; the answer holds its token, shown once.
func (c *Client) CreateAPIKey(ctx context.Context, r KeyRequest) (NewKey, error) {
	var v NewKey
	return v, c.doJSON(ctx, "POST", "/api/v1/apikeys", r, &v)
}

// APIKeys lists keys.
func (c *Client) APIKeys(ctx context.Context) ([]APIKey, error) {
	var v []APIKey
	return v, c.doJSON(ctx, "GET", "/api/v1/apikeys", nil, &v)
}

// RevokeAPIKey revokes a key.
func (c *Client) RevokeAPIKey(ctx context.Context, id string) error {
	return c.doJSON(ctx, "DELETE", "/api/v1/apikeys/"+url.PathEscape(id), nil, nil)
}

// Audit returns the most recent audit entries, oldest first.
func (c *Client) Audit(ctx context.Context, limit int) ([]AuditEntry, error) {
	var v []AuditEntry
	return v, c.doJSON(ctx, "GET", "/api/v1/audit?limit="+strconv.Itoa(limit), nil, &v)
}

// SetDeviceKey provisions or rotates a device's key for encrypted images
// (PUT /api/v1/devices/{id}/key).
func (c *Client) SetDeviceKey(ctx context.Context, device string, req DeviceKeyRequest) (DeviceKeyReply, error) {
	var v DeviceKeyReply
	return v, c.doJSON(ctx, "PUT", "/api/v1/devices/"+url.PathEscape(device)+"/key", req, &v)
}
