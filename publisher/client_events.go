package publisher

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// Event is one server-sent event of GET /api/v1/events.
type Event struct {
	// ID is the event id to resume after (empty on events without one).
	ID string
	// Kind is "snapshot", "update" or "end".
	Kind string
	// Batch is the data of snapshot and update events.
	Batch EventBatch
	// End is the data of an end event: why the stream ends.
	End ErrorReply
}

// Events follows the event stream of campaign (all campaigns when empty),
// resuming after event id last when it is not empty, and calls fn with
// every event, in order, until fn returns an error (returned), the stream
// ends (nil after an end event, else the read error), or ctx ends.
func (c *Client) Events(ctx context.Context, campaign, last string, fn func(Event) error) error {
	q := url.Values{}
	if campaign != "" {
		q.Set("campaign", campaign)
	}
	req, err := http.NewRequestWithContext(ctx, "GET", strings.TrimRight(c.BaseURL, "/")+"/api/v1/events?"+q.Encode(), nil)
	if err != nil {
		return fmt.Errorf("publisher client: %w", err)
	}
	if c.Key != "" {
		req.Header.Set("Authorization", "Bearer "+c.Key)
	}
	if last != "" {
		req.Header.Set("Last-Event-ID", last)
	}
	req.Header.Set("Accept", "text/event-stream")
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	res, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("publisher client: events: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
		var er ErrorReply
		if json.Unmarshal(b, &er) != nil || er.Error == "" {
			er.Error = strings.TrimSpace(string(b))
		}
		return &APIError{Status: res.StatusCode, Message: er.Error}
	}
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(nil, 16<<20)
	var ev Event
	var data strings.Builder
	for sc.Scan() {
		line := sc.Text()
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch {
		case line == "":
			if ev.Kind == "" {
				data.Reset()
				continue
			}
			var err error
			if ev.Kind == "end" {
				err = json.Unmarshal([]byte(data.String()), &ev.End)
			} else {
				err = json.Unmarshal([]byte(data.String()), &ev.Batch)
			}
			if err != nil {
				return fmt.Errorf("publisher client: events: bad %s event: %w", ev.Kind, err)
			}
			if err := fn(ev); err != nil {
				return err
			}
			if ev.Kind == "end" {
				return nil
			}
			ev = Event{}
			data.Reset()
		case field == "id":
			ev.ID = value
		case field == "event":
			ev.Kind = value
		case field == "data":
			data.WriteString(value)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("publisher client: events: %w", err)
	}
	return fmt.Errorf("publisher client: events: %w", io.ErrUnexpectedEOF)
}
