package publisher

import (
	"context"
	"net/url"
	"strconv"
)

// CampaignDevices returns one page of a campaign's devices (see
// DeviceFilter).
func (c *Client) CampaignDevices(ctx context.Context, id string, f DeviceFilter) (DevicePage, error) {
	q := url.Values{}
	for k, v := range map[string]string{"state": f.State, "reason": f.Reason, "after": f.After} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if f.Phase != nil {
		q.Set("phase", strconv.Itoa(*f.Phase))
	}
	if f.Limit != 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var v DevicePage
	err := c.doJSON(ctx, "GET", "/api/v1/campaigns/"+url.PathEscape(id)+"/devices?"+q.Encode(), nil, &v)
	return v, err
}

// CampaignFailures returns a campaign's failed devices grouped by reason.
func (c *Client) CampaignFailures(ctx context.Context, id string) ([]FailureGroup, error) {
	var v []FailureGroup
	err := c.doJSON(ctx, "GET", "/api/v1/campaigns/"+url.PathEscape(id)+"/failures", nil, &v)
	return v, err
}

// DeviceHistory returns what a device reported, oldest first, at most
// limit (0: the server's default).
func (c *Client) DeviceHistory(ctx context.Context, id string, limit int) ([]DeviceState, error) {
	q := ""
	if limit > 0 {
		q = "?limit=" + strconv.Itoa(limit)
	}
	var v []DeviceState
	err := c.doJSON(ctx, "GET", "/api/v1/devices/"+url.PathEscape(id)+"/history"+q, nil, &v)
	return v, err
}

// Fleet returns the fleet summary.
func (c *Client) Fleet(ctx context.Context) (FleetSummary, error) {
	var v FleetSummary
	err := c.doJSON(ctx, "GET", "/api/v1/fleet", nil, &v)
	return v, err
}

// ImageUses lists the images with the campaigns that deliver them.
func (c *Client) ImageUses(ctx context.Context) ([]ImageUse, error) {
	var v []ImageUse
	err := c.doJSON(ctx, "GET", "/api/v1/images", nil, &v)
	return v, err
}

// DeleteImage deletes an image no campaign in progress delivers.
func (c *Client) DeleteImage(ctx context.Context, digest string) error {
	return c.doJSON(ctx, "DELETE", "/api/v1/images/"+url.PathEscape(digest), nil, nil)
}
