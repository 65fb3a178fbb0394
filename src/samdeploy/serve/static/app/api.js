// The HTTP client of the samdeploy server (docs/server.md): every failure becomes an ApiError whose
// message is the server's one-line {"error": ...} or says what happened to the connection.

export class ApiError extends Error {
  /**
   * @param {number} status HTTP status, 0 when the server could not be reached
   * @param {string} message one line for the user
   * @param {number | null} retryAfter seconds, from a 503's Retry-After
   */
  constructor(status, message, retryAfter = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

const UNREACHABLE = "cannot reach the server: is `samdeploy serve` still running?";

function errorFrom(status, statusText, bodyText, retryAfterHeader) {
  let message = `${status} ${statusText}`.trim();
  try {
    const body = JSON.parse(bodyText);
    if (body && typeof body.error === "string") message = body.error;
  } catch {
    // not JSON (a proxy's page, an empty body): the status line is the message
  }
  if (status === 401) message = `${message} (enter the server's API key under Settings)`;
  const retryAfter = retryAfterHeader ? Number(retryAfterHeader) : null;
  if (status === 503 && retryAfter) message = `${message} (server busy: try again in ${retryAfter} s)`;
  return new ApiError(status, message, retryAfter);
}

/**
 * @param {{base?: string, apiKey: () => string}} options base URL ('' = this page's server)
 */
export function createApi({ base = "", apiKey }) {
  const headers = (extra = {}) => {
    const key = apiKey();
    return key ? { ...extra, "X-API-Key": key } : extra;
  };

  async function request(method, path, body, signal) {
    let response;
    try {
      response = await fetch(base + path, {
        method,
        headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError(0, UNREACHABLE);
    }
    const text = await response.text();
    if (!response.ok) throw errorFrom(response.status, response.statusText, text, response.headers.get("Retry-After"));
    try {
      return JSON.parse(text);
    } catch {
      throw new ApiError(response.status, `the server answered ${path} with something that is not JSON`);
    }
  }

  return {
    /**
     * Upload an image; the server answers once its embedding is computed.
     * XMLHttpRequest rather than fetch: only it reports upload progress.
     * @param {Blob} blob the image file's bytes
     * @param {(phase: "upload" | "embedding", fraction: number) => void} onProgress
     * @returns {Promise<{image_id: string, width: number, height: number, model_id: string, cached: boolean}>}
     */
    uploadImage(blob, onProgress) {
      return new Promise((resolve, reject) => {
        const xhr = new XMLHttpRequest();
        xhr.open("POST", `${base}/v1/images`);
        for (const [name, value] of Object.entries(headers({ "Content-Type": "application/octet-stream" }))) {
          xhr.setRequestHeader(name, value);
        }
        xhr.upload.onprogress = (event) => {
          if (event.lengthComputable) onProgress("upload", event.loaded / event.total);
        };
        xhr.upload.onload = () => onProgress("embedding", 0);
        xhr.onerror = () => reject(new ApiError(0, UNREACHABLE));
        xhr.onload = () => {
          if (xhr.status < 200 || xhr.status >= 300) {
            reject(errorFrom(xhr.status, xhr.statusText, xhr.responseText, xhr.getResponseHeader("Retry-After")));
            return;
          }
          try {
            resolve(JSON.parse(xhr.responseText));
          } catch {
            reject(new ApiError(xhr.status, "the server answered the upload with something that is not JSON"));
          }
        };
        xhr.send(blob);
      });
    },
    /** POST /v1/images/{id}/segment; `signal` aborts it (a stale hover). */
    segment(imageId, body, signal) {
      return request("POST", `/v1/images/${imageId}/segment`, body, signal);
    },
    /** POST /v1/images/{id}/everything: starts a job. */
    everything(imageId, options) {
      return request("POST", `/v1/images/${imageId}/everything`, options);
    },
    /** GET /v1/jobs/{id}: its status, progress and, when done, its records. */
    job(jobId) {
      return request("GET", `/v1/jobs/${jobId}`);
    },
  };
}
