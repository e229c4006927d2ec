// A small typed event emitter, so the package needs nothing beyond socket.io-client and works
// the same in browsers and Node.

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Listener = (...args: any[]) => void;

export class Emitter<Events extends { [K in keyof Events]: Listener }> {
  #listeners = new Map<keyof Events, Set<Listener>>();

  /** Calls `listener` on every `event`; returns a function that removes it. */
  on<K extends keyof Events>(event: K, listener: Events[K]): () => void {
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => this.off(event, listener);
  }

  off<K extends keyof Events>(event: K, listener: Events[K]): void {
    this.#listeners.get(event)?.delete(listener);
  }

  /** Calls `listener` on the next `event` only. */
  once<K extends keyof Events>(event: K, listener: Events[K]): () => void {
    const wrapped = ((...args: unknown[]) => {
      this.off(event, wrapped);
      listener(...args);
    }) as Events[K];
    return this.on(event, wrapped);
  }

  protected emit<K extends keyof Events>(event: K, ...args: Parameters<Events[K]>): void {
    const set = this.#listeners.get(event);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(...args);
      } catch (error) {
        // A throwing listener must not break the client's bookkeeping; report it asynchronously.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }
}
