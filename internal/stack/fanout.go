package stack

import (
	"context"
	"errors"

	"github.com/firmcast/firmcast/broker"
	"github.com/firmcast/firmcast/schemas"
)

// fanOutTransport joins several transports: publishes go to each,
// subscriptions are made on each, requests go to the first.
type fanOutTransport []broker.Transport

func fanOut(trs []broker.Transport) broker.Transport {
	if len(trs) == 1 {
		return trs[0]
	}
	return fanOutTransport(trs)
}

func (f fanOutTransport) Publish(ctx context.Context, t schemas.Topic, b []byte, o broker.PublishOptions) error {
	var errs []error
	for _, tr := range f {
		errs = append(errs, tr.Publish(ctx, t, b, o))
	}
	return errors.Join(errs...)
}

type fanOutSub []broker.Subscription

func (s fanOutSub) Unsubscribe(ctx context.Context) error {
	var errs []error
	for _, x := range s {
		errs = append(errs, x.Unsubscribe(ctx))
	}
	return errors.Join(errs...)
}

func (f fanOutTransport) Subscribe(ctx context.Context, t schemas.Topic, h broker.Handler, o broker.SubscribeOptions) (broker.Subscription, error) {
	var subs fanOutSub
	for _, tr := range f {
		s, err := tr.Subscribe(ctx, t, h, o)
		if err != nil {
			subs.Unsubscribe(ctx)
			return nil, err
		}
		subs = append(subs, s)
	}
	return subs, nil
}

func (f fanOutTransport) Request(ctx context.Context, t schemas.Topic, b []byte) ([]byte, error) {
	return f[0].Request(ctx, t, b)
}

// Reply answers through every transport: only the one the request came
// from has a listener on its reply address.
func (f fanOutTransport) Reply(ctx context.Context, req broker.Message, b []byte) error {
	var errs []error
	for _, tr := range f {
		err := tr.Reply(ctx, req, b)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Dialect is the first transport's, the one requests go to.
func (f fanOutTransport) Dialect() broker.Dialect { return f[0].Dialect() }

// ReceiveQueue is 0: the brokers' transports differ, so no handler may
// count on holding one back.
func (f fanOutTransport) ReceiveQueue() int { return 0 }

func (f fanOutTransport) Close(ctx context.Context) error {
	var errs []error
	for _, tr := range f {
		errs = append(errs, tr.Close(ctx))
	}
	return errors.Join(errs...)
}
