/**
 * "Only the latest": each call to `next()` takes a ticket; `wait(ticket, ms)` resolves
 * true after `ms` if no newer ticket was taken meanwhile, false otherwise. Used to
 * debounce automatic completion requests while typing.
 *
 * Pure: the timer is injectable.
 */
export class LatestOnly {
  constructor(
    private readonly _sleep: (ms: number) => Promise<void> = ms =>
      new Promise(resolve => setTimeout(resolve, ms))
  ) {}

  /** Take a new ticket; every older ticket becomes stale. */
  next(): number {
    return ++this._ticket;
  }

  isLatest(ticket: number): boolean {
    return ticket === this._ticket;
  }

  /** Wait `ms`; true when `ticket` is still the latest afterwards. */
  async wait(ticket: number, ms: number): Promise<boolean> {
    if (ms > 0) {
      await this._sleep(ms);
    }
    return this.isLatest(ticket);
  }

  private _ticket = 0;
}
