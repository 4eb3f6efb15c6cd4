export * from './incremental.js';
export * from './pseudo.js';
export * from './rewrite.js';
export * from './sum.js';
export * from './verify.js';
