// A client on a stalled connection, for the event streams' backpressure tests: it reads until a
// marker arrives, then stops reading, so the server's later writes pile up in its own buffers.
import { once } from 'node:events';
import net from 'node:net';
import { eventually } from './eventually.js';

export class StalledReader {
  /** What was read before the reader stalled (and after it resumed). */
  text = '';
  /** The connection closed (seen only while reading). */
  closed = false;

  constructor(private readonly socket: net.Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.text += chunk;
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      this.closed = true;
    });
  }

  /** Read again, and wait for the server to have ended or dropped the connection. */
  async drainToEnd(timeoutMs = 5000): Promise<void> {
    this.socket.resume();
    await eventually(() => this.closed, 'the server to end the stalled connection', { timeoutMs });
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/**
 * `GET url` over a bare socket that stops reading once `until` is among what it has read. HTTP/1.1
 * by hand: the stream's chunked body is read as text, which is all the tests look at.
 */
export async function stalledReader(
  url: string,
  until: string,
  headers: Record<string, string> = {},
): Promise<StalledReader> {
  const { hostname, port, pathname, search } = new URL(url);
  const socket = net.connect(Number(port), hostname);
  await once(socket, 'connect');
  const lines = [
    `GET ${pathname}${search} HTTP/1.1`,
    `Host: ${hostname}:${port}`,
    'Accept: text/event-stream',
  ];
  for (const [name, value] of Object.entries(headers)) lines.push(`${name}: ${value}`);
  socket.write(`${lines.join('\r\n')}\r\n\r\n`);
  const reader = new StalledReader(socket);
  await eventually(() => reader.text.includes(until) || reader.closed, `"${until}" on the stream`, {
    timeoutMs: 5000,
  });
  if (reader.closed) throw new Error(`The server closed the stream before "${until}":\n${reader.text}`);
  socket.pause();
  return reader;
}
