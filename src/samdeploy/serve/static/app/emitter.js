// A tiny event emitter: the only channel between the page's modules.

/**
 * @returns {{on(name: string, fn: Function): () => void, emit(name: string, ...args: any[]): void}}
 */
export function createEmitter() {
  const handlers = new Map();
  return {
    on(name, fn) {
      if (!handlers.has(name)) handlers.set(name, new Set());
      handlers.get(name).add(fn);
      return () => handlers.get(name).delete(fn);
    },
    emit(name, ...args) {
      for (const fn of handlers.get(name) ?? []) fn(...args);
    },
  };
}
