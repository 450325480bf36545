import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import { backoffDelay, Poller } from '../src/poller';

/** A task whose every run the test settles by hand. */
function manualTask() {
  const runs: { resolve: () => void; reject: (e: Error) => void }[] = [];
  const task = vi.fn(
    () =>
      new Promise<void>((resolve, reject) => {
        runs.push({ resolve, reject });
      })
  );
  return { task, runs };
}

describe('backoffDelay', () => {
  it('is the interval while healthy and doubles per failure up to the cap', () => {
    expect(backoffDelay(0)).toBe(2000);
    expect([1, 2, 3, 4, 5, 10].map(n => backoffDelay(n))).toEqual([
      4000, 8000, 16000, 30000, 30000, 30000
    ]);
    expect(backoffDelay(2, 1000, 5000, 3)).toBe(5000);
    expect(backoffDelay(1, 1000, 5000, 3)).toBe(3000);
  });
});

describe('Poller', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('runs at once when activated, then every 2 s counted from the end of a run', async () => {
    const task = vi.fn(() => Promise.resolve());
    const poller = new Poller({ task });
    expect(task).not.toHaveBeenCalled();
    poller.setActive(true);
    expect(task).toHaveBeenCalledTimes(1);
    await vi.advanceTimersByTimeAsync(1999);
    expect(task).toHaveBeenCalledTimes(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(task).toHaveBeenCalledTimes(2);
    await vi.advanceTimersByTimeAsync(2000 * 5);
    expect(task).toHaveBeenCalledTimes(7);
    poller.dispose();
  });

  it('polls every 0.5 s while busy (a model starting), back to 2 s after', async () => {
    let busy = true;
    const task = vi.fn(() => Promise.resolve());
    const poller = new Poller({ task, isBusy: () => busy });
    poller.setActive(true);
    expect(task).toHaveBeenCalledTimes(1);
    await vi.advanceTimersByTimeAsync(500);
    expect(task).toHaveBeenCalledTimes(2);
    await vi.advanceTimersByTimeAsync(500 * 3);
    expect(task).toHaveBeenCalledTimes(5);
    busy = false;
    await vi.advanceTimersByTimeAsync(500);
    expect(task).toHaveBeenCalledTimes(6); // the run scheduled while busy
    await vi.advanceTimersByTimeAsync(1999);
    expect(task).toHaveBeenCalledTimes(6);
    await vi.advanceTimersByTimeAsync(1);
    expect(task).toHaveBeenCalledTimes(7);
    poller.dispose();
  });

  it('backs off on errors even while busy', async () => {
    const task = vi.fn(() => Promise.reject(new Error('down')));
    const poller = new Poller({ task, isBusy: () => true });
    poller.setActive(true);
    await vi.advanceTimersByTimeAsync(0);
    expect(poller.failures).toBe(1);
    expect(poller.nextDelay).toBe(4000);
    poller.dispose();
  });

  it('never overlaps runs: a slow run delays the next one', async () => {
    const { task, runs } = manualTask();
    const poller = new Poller({ task });
    poller.setActive(true);
    await vi.advanceTimersByTimeAsync(10000);
    expect(task).toHaveBeenCalledTimes(1);
    runs[0].resolve();
    await vi.advanceTimersByTimeAsync(2000);
    expect(task).toHaveBeenCalledTimes(2);
    poller.dispose();
  });

  it('backs off on errors up to 30 s and returns to 2 s after one success', async () => {
    let fail = true;
    const task = vi.fn(() => (fail ? Promise.reject(new Error('down')) : Promise.resolve()));
    const settled: boolean[] = [];
    const poller = new Poller({ task, onSettled: ok => settled.push(ok) });
    poller.setActive(true);
    await vi.advanceTimersByTimeAsync(0);
    expect(poller.failures).toBe(1);
    expect(poller.nextDelay).toBe(4000);

    // Calls happen at t = 0, 4, 12, 28, 58, 88 s.
    const callsAt = (ms: number) => vi.advanceTimersByTimeAsync(ms).then(() => task.mock.calls.length);
    expect(await callsAt(3999)).toBe(1);
    expect(await callsAt(1)).toBe(2);
    expect(await callsAt(8000)).toBe(3);
    expect(await callsAt(16000)).toBe(4);
    expect(poller.nextDelay).toBe(30000);
    expect(await callsAt(29999)).toBe(4);
    expect(await callsAt(1)).toBe(5);
    expect(await callsAt(30000)).toBe(6);
    expect(poller.failures).toBe(6);

    fail = false;
    expect(await callsAt(30000)).toBe(7);
    expect(poller.failures).toBe(0);
    expect(poller.nextDelay).toBe(2000);
    expect(await callsAt(2000)).toBe(8);
    expect(settled.slice(0, 6).every(ok => !ok)).toBe(true);
    expect(settled.slice(6)).toEqual([true, true]);
    poller.dispose();
  });

  it('stops while inactive and polls at once when active again', async () => {
    const task = vi.fn(() => Promise.resolve());
    const poller = new Poller({ task });
    poller.setActive(true);
    await vi.advanceTimersByTimeAsync(0);
    expect(poller.isScheduled).toBe(true);
    poller.setActive(false);
    expect(poller.isScheduled).toBe(false);
    await vi.advanceTimersByTimeAsync(60000);
    expect(task).toHaveBeenCalledTimes(1);
    poller.setActive(true);
    expect(task).toHaveBeenCalledTimes(2);
    poller.setActive(true); // no-op: already active
    expect(task).toHaveBeenCalledTimes(2);
    poller.dispose();
  });

  it('does not schedule after a run that ends while inactive', async () => {
    const { task, runs } = manualTask();
    const poller = new Poller({ task });
    poller.setActive(true);
    poller.setActive(false);
    runs[0].resolve();
    await vi.advanceTimersByTimeAsync(60000);
    expect(task).toHaveBeenCalledTimes(1);
    expect(poller.isScheduled).toBe(false);
  });

  it('refresh runs now, cancelling the pending timer', async () => {
    const task = vi.fn(() => Promise.resolve());
    const poller = new Poller({ task });
    poller.setActive(true);
    await vi.advanceTimersByTimeAsync(1000);
    await poller.refresh();
    expect(task).toHaveBeenCalledTimes(2);
    // The schedule restarts from the refresh: next run 2 s after it.
    await vi.advanceTimersByTimeAsync(1999);
    expect(task).toHaveBeenCalledTimes(2);
    await vi.advanceTimersByTimeAsync(1);
    expect(task).toHaveBeenCalledTimes(3);
    poller.dispose();
  });

  it('refresh during a run queues exactly one more run and resolves after it', async () => {
    const { task, runs } = manualTask();
    const poller = new Poller({ task });
    poller.setActive(true);
    let done = 0;
    void poller.refresh().then(() => done++);
    void poller.refresh().then(() => done++);
    expect(task).toHaveBeenCalledTimes(1);
    runs[0].resolve();
    await vi.advanceTimersByTimeAsync(0);
    expect(task).toHaveBeenCalledTimes(2);
    expect(done).toBe(0);
    runs[1].resolve();
    await vi.advanceTimersByTimeAsync(0);
    expect(done).toBe(2);
    poller.dispose();
  });

  it('refresh works while inactive but does not start the schedule', async () => {
    const task = vi.fn(() => Promise.resolve());
    const poller = new Poller({ task });
    await poller.refresh();
    expect(task).toHaveBeenCalledTimes(1);
    expect(poller.isScheduled).toBe(false);
  });

  it('does nothing after dispose', async () => {
    const task = vi.fn(() => Promise.resolve());
    const poller = new Poller({ task });
    poller.setActive(true);
    poller.dispose();
    await vi.advanceTimersByTimeAsync(10000);
    await poller.refresh();
    poller.setActive(true);
    expect(task).toHaveBeenCalledTimes(1);
    expect(poller.isDisposed).toBe(true);
  });

  it('uses injected timers', async () => {
    const pending: { fn: () => void; ms: number }[] = [];
    const timers = {
      setTimeout: (fn: () => void, ms: number) => pending.push({ fn, ms }),
      clearTimeout: () => undefined
    };
    const task = vi.fn(() => Promise.resolve());
    const poller = new Poller({ task, timers, interval: 500 });
    poller.setActive(true);
    await vi.advanceTimersByTimeAsync(0);
    expect(pending.map(p => p.ms)).toEqual([500]);
    pending[0].fn();
    expect(task).toHaveBeenCalledTimes(2);
    poller.dispose();
  });
});
