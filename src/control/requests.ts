/**
 * The control protocol's requests as JSON Schemas: the envelope every request
 * line must be, and the `args` of each command. The server (server.ts) checks
 * every request against them once, before a handler runs, with the validator the
 * config file uses (src/config/validator.ts), and answers a request that fails
 * with ERR_CONTROL_BAD_REQUEST naming the field and the value. A handler's
 * argument is typed from its command's schema (`CommandArgs<'bind'>`), so no
 * handler checks types by hand or casts: a request that reaches it has the shape
 * its schema says. What a schema cannot say (an AID the config does not know, a
 * loopback bind address, an octet above 255) is the handler's to check.
 *
 * Why nothing is trusted: anyone with root can write to the socket, and so can a
 * program under `vpm exec` with a bug in its use of the library; a malformed
 * request must get an error, never crash or confuse the daemon. Unknown fields
 * are errors, as in the config file: a misspelt field would be silently ignored.
 */

import type { FromSchema } from 'json-schema-to-ts';
import { nameDef, portDef } from '../config/schema.js';

export const PROTOCOL_VERSION = 1;

/** One request line. `v` is checked first: another version is ERR_CONTROL_VERSION. */
export const requestSchema = {
  $id: 'urn:vpm:control:request',
  type: 'object',
  additionalProperties: false,
  required: ['v', 'id', 'cmd'],
  properties: {
    v: { const: PROTOCOL_VERSION },
    id: { type: ['number', 'string'] },
    cmd: { type: 'string', minLength: 1, maxLength: 64 },
    args: { type: 'object' },
    oneway: { type: 'boolean' },
  },
} as const;

export type ControlRequest = FromSchema<typeof requestSchema>;

const pid = { type: 'integer', minimum: 1, maximum: 2147483647 } as const;
const fd = { type: 'integer', minimum: 0, maximum: 2147483647 } as const;
const proto = { type: 'string', enum: ['tcp', 'udp'] } as const;

/** A command without arguments: `args` absent or `{}`. */
const noArgs = {
  type: 'object',
  additionalProperties: false,
  properties: {},
} as const;

const helloArgs = {
  $id: 'urn:vpm:control:hello',
  type: 'object',
  additionalProperties: false,
  required: ['aid'],
  properties: { aid: nameDef, pid },
} as const;

const bindArgs = {
  $id: 'urn:vpm:control:bind',
  type: 'object',
  additionalProperties: false,
  required: ['aid', 'proto', 'vport', 'pid', 'fd'],
  properties: {
    aid: nameDef,
    proto,
    vport: portDef,
    /**
     * What the program asked for: "0.0.0.0", "::", an IPv4 or an IPv6 address (a
     * v4-mapped one as its IPv4 address). Absent: "0.0.0.0".
     */
    addr: { type: 'string', maxLength: 64 },
    /**
     * "::" on a socket with IPV6_V6ONLY: IPv6 only. Absent or false: "::" serves
     * both families, as the kernel's dual-stack socket does.
     */
    v6only: { type: 'boolean' },
    pid,
    fd,
  },
} as const;

const releaseArgs = {
  $id: 'urn:vpm:control:release',
  type: 'object',
  additionalProperties: false,
  required: ['pid', 'fd'],
  properties: {
    aid: nameDef,
    proto,
    vport: portDef,
    /** The real port granted; absent: whatever the (pid, fd) registration holds. */
    port: portDef,
    pid,
    fd,
  },
} as const;

const connectArgs = {
  $id: 'urn:vpm:control:connect',
  type: 'object',
  additionalProperties: false,
  required: ['aid', 'local'],
  properties: {
    aid: nameDef,
    proto,
    local: {
      type: 'string',
      title: '"a.b.c.d:port" or "[v6]:port"',
      pattern: '^([0-9]{1,3}(\\.[0-9]{1,3}){3}|\\[[0-9a-fA-F:.]{2,45}\\]):[0-9]{1,5}$',
    },
    remote: { type: 'string' },
    pid,
    /**
     * The reporting socket's descriptor. A UDP report lives until `release` of
     * this (pid, fd) or the end of the connection it came on.
     */
    fd,
  },
} as const;

const handoverArgs = {
  $id: 'urn:vpm:control:handover',
  type: 'object',
  additionalProperties: false,
  required: ['path'],
  properties: {
    /**
     * The unix socket the new daemon (`vpm restart`) listens on for the TUN's
     * fd: a path in the daemon's own run directory, `<tun>.handover`.
     */
    path: { type: 'string', minLength: 1, maxLength: 107 },
  },
} as const;

/** Every command the daemon answers, with the schema of its `args`. */
export const COMMANDS = {
  ping: noArgs,
  stats: noArgs,
  flows: noArgs,
  reload: noArgs,
  services: noArgs,
  instances: noArgs,
  hello: helloArgs,
  bind: bindArgs,
  release: releaseArgs,
  connect: connectArgs,
  handover: handoverArgs,
} as const;

export type Command = keyof typeof COMMANDS;

type ArgsByCommand = { [C in Command]: FromSchema<(typeof COMMANDS)[C]> };

/**
 * Each command's `args` as a handler receives them: validated, typed from its
 * schema. An interface, not the mapped type itself: indexing a mapped type with
 * a generic `C` lets the checker rewrite it as FromSchema of every schema at
 * once, which is too deep for it.
 */
export interface CommandArgsMap extends ArgsByCommand {}

export type CommandArgs<C extends Command> = CommandArgsMap[C];

export type HelloArgs = CommandArgs<'hello'>;
export type BindArgs = CommandArgs<'bind'>;
export type ReleaseArgs = CommandArgs<'release'>;
export type ConnectArgs = CommandArgs<'connect'>;

export function isCommand(cmd: string): cmd is Command {
  return Object.hasOwn(COMMANDS, cmd);
}
