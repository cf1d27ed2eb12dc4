import type { Server as NetServer } from 'node:net';

type Target = NetServer | { httpServer: NetServer } | ((req: any, res: any, next?: any) => void);

interface StickyShape {
  listen(port?: number | string, callback?: () => void): NetServer;
}

/** The socketio-sticky-session shape: sticky(options, () => server).listen(port, cb). */
declare function sticky(options: object | number, serverOrFactory: Target | (() => Target)): StickyShape;
declare function sticky(serverOrFactory: Target | (() => Target)): StickyShape;

declare namespace sticky {
  interface ProxyHeader {
    version: 1 | 2;
    /** true for v2 LOCAL, v1 UNKNOWN, or an address family with no IP: the socket's own address stays */
    local: boolean;
    address?: string;
    port?: number;
    family?: 'IPv4' | 'IPv6';
  }
  interface Options {
    /** false when stickyd runs with --send-proxy none (default true) */
    proxyHeader?: boolean;
    /** ms to wait for the PROXY header (default 5000) */
    headerTimeout?: number;
    /** handle SIGTERM: stop accepting, let connections finish, exit 0 (default true) */
    shutdown?: boolean;
    /** one log line (default console.error) */
    log?: (line: string) => void;
    /** where PORT / SOCKET are read (default process.env) */
    env?: NodeJS.ProcessEnv;
  }
  class HeaderError extends Error {
    reason: string;
  }
  function listen(server: Target, port?: number | string, options?: Options, callback?: () => void): NetServer;
  function listen(server: Target, options?: Options, callback?: () => void): NetServer;
  function listen(server: Target, callback?: () => void): NetServer;
  function acceptProxy<S extends NetServer>(server: S, options?: Options): S;
  function parse(header: Buffer): ProxyHeader;
  function frame(buf: Buffer): number;
  /**
   * Why this process has no Node IPC channel though stickyd gave its worker
   * one (a wrapper such as npm start took it), or null. The package prints
   * it once when loaded.
   */
  function channelLost(env: NodeJS.ProcessEnv): string | null;
  export { sticky };
}

export = sticky;
