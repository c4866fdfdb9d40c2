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
