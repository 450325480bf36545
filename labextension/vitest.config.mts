import { defineConfig } from 'vitest/config';

// The tested modules are the pure ones (no DOM, no JupyterLab), so the plain
// node environment is enough.
export default defineConfig({
  test: {
    include: ['test/**/*.spec.ts'],
    environment: 'node'
  }
});
