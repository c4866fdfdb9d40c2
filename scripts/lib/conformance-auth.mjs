// Loaded with `node --import` into the conformance suite when it tests the
// gateway: adds the gateway's API key to every request the suite sends to
// the gateway, so the protocol is tested with authentication switched on.
//
// Both `fetch` and undici's `request` go through undici's global
// dispatcher, so one interceptor there covers every request.
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

const token = process.env.BASTION_CONFORMANCE_TOKEN;
const origin = process.env.BASTION_CONFORMANCE_ORIGIN; // e.g. http://127.0.0.1:8080
const modules = process.env.BASTION_CONFORMANCE_NODE_MODULES;

if (token && origin && modules) {
  const require = createRequire(pathToFileURL(`${modules}/`));
  const { Agent, setGlobalDispatcher } = require('undici');
  const addAuth = (dispatch) => (opts, handler) => {
    if (String(opts.origin).replace(/\/$/, '') === origin) {
      const h = opts.headers;
      if (Array.isArray(h)) {
        opts.headers = [...h, 'authorization', `Bearer ${token}`];
      } else {
        opts.headers = { ...(h ?? {}), authorization: `Bearer ${token}` };
      }
    }
    return dispatch(opts, handler);
  };
  setGlobalDispatcher(new Agent().compose(addAuth));
}

// Some scenarios send raw requests with node:http to control header casing.
if (token && origin) {
  const http = (await import('node:http')).default;
  const target = new URL(origin);
  const originalRequest = http.request;
  const matches = (o) =>
    o && (o.hostname ?? o.host) === target.hostname && String(o.port ?? '') === target.port;
  http.request = function (...args) {
    if (typeof args[0] === 'string' || args[0] instanceof URL) {
      const url = new URL(args[0]);
      if (url.origin === target.origin) {
        const opts = typeof args[1] === 'object' && args[1] !== null && typeof args[1] !== 'function' ? args[1] : {};
        const rest = opts === args[1] ? args.slice(2) : args.slice(1);
        return originalRequest.call(this, url, { ...opts, headers: withAuth(opts.headers) }, ...rest);
      }
    } else if (matches(args[0])) {
      args[0] = { ...args[0], headers: withAuth(args[0].headers) };
    }
    return originalRequest.apply(this, args);
  };
  function withAuth(headers) {
    if (Array.isArray(headers)) return [...headers, 'authorization', `Bearer ${token}`];
    const h = { ...(headers ?? {}) };
    if (!Object.keys(h).some((k) => k.toLowerCase() === 'authorization')) h.authorization = `Bearer ${token}`;
    return h;
  }
}
