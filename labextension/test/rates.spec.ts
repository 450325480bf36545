import { describe, expect, it } from 'vitest';

import { RateTracker, requestsTotal } from '../src/rates';

describe('requestsTotal', () => {
  it('reads the counter and tolerates its absence', () => {
    expect(requestsTotal({ requests_total: 12 })).toBe(12);
    expect(requestsTotal({ requests_total: 0 })).toBe(0);
    expect(requestsTotal({})).toBeNull();
    expect(requestsTotal(null)).toBeNull();
    expect(requestsTotal(undefined)).toBeNull();
    expect(requestsTotal({ requests_total: '12' })).toBeNull();
    expect(requestsTotal({ requests_total: NaN })).toBeNull();
  });
});

describe('RateTracker', () => {
  it('is unknown until two samples, then counts per second', () => {
    const t = new RateTracker();
    expect(t.update('m', '1', 10, 0)).toBeNull();
    expect(t.update('m', '1', 20, 2000)).toBe(5);
    expect(t.update('m', '1', 20, 4000)).toBe(2.5); // over 0..4 s
    expect(t.rate('m')).toBe(2.5);
  });

  it('averages over a sliding window of 10 s', () => {
    const t = new RateTracker(10000);
    // 100 req/s for 10 s, then idle.
    for (let s = 0; s <= 10; s += 2) {
      t.update('m', '1', s * 100, s * 1000);
    }
    expect(t.rate('m')).toBe(100);
    let rate: number | null = null;
    for (let s = 12; s <= 20; s += 2) {
      rate = t.update('m', '1', 1000, s * 1000);
    }
    expect(rate).toBe(0);
  });

  it('keeps the newest sample before the window start as baseline', () => {
    const t = new RateTracker(10000);
    t.update('m', '1', 0, 0);
    t.update('m', '1', 50, 5000);
    // At 12 s the window starts at 2 s: the baseline is the 0 s sample
    // (nothing between 0 and 2 s), until a newer one falls out of the window.
    expect(t.update('m', '1', 120, 12000)).toBe(10);
    expect(t.update('m', '1', 170, 17000)).toBeCloseTo(10);
  });

  it('starts afresh when the counter goes down or the version changes', () => {
    const t = new RateTracker();
    t.update('m', '1', 100, 0);
    expect(t.update('m', '1', 120, 2000)).toBe(10);
    expect(t.update('m', '1', 5, 4000)).toBeNull();
    expect(t.update('m', '1', 9, 6000)).toBe(2);
    expect(t.update('m', '2', 50, 8000)).toBeNull();
    expect(t.update('m', '2', 54, 10000)).toBe(2);
  });

  it('has no rate without a counter, and forgets the series', () => {
    const t = new RateTracker();
    t.update('m', '1', 1, 0);
    t.update('m', '1', 3, 1000);
    expect(t.update('m', '1', null, 2000)).toBeNull();
    expect(t.update('m', '1', 10, 3000)).toBeNull();
  });

  it('does not divide by zero on samples at the same instant', () => {
    const t = new RateTracker();
    t.update('m', '1', 1, 1000);
    expect(t.update('m', '1', 5, 1000)).toBeNull();
    expect(t.update('m', '1', 7, 2000)).toBe(2);
  });

  it('retains only the named models', () => {
    const t = new RateTracker();
    for (const name of ['a', 'b']) {
      t.update(name, '1', 0, 0);
      t.update(name, '1', 2, 1000);
    }
    t.retain(['b']);
    expect(t.rate('a')).toBeNull();
    expect(t.rate('b')).toBe(2);
  });
});
