export * from './device.js';
export * from './errors.js';
export * from './kernel-tun.js';
export * from './memory-tun.js';
