import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import type { Transport } from './client';

/** The REST contract's prefix under Jupyter's base_url. */
export const API_PREFIX = 'lmserve/api';

/**
 * A transport through ServerConnection.makeRequest, so Jupyter's own auth
 * (token, cookies, XSRF) applies to every call.
 */
export function jupyterTransport(
  settings: ServerConnection.ISettings
): Transport {
  return (path, init) => {
    const [route, query] = path.split('?', 2);
    const url =
      URLExt.join(settings.baseUrl, API_PREFIX, route) +
      (query ? `?${query}` : '');
    return ServerConnection.makeRequest(url, init, settings);
  };
}
