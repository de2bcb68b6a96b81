// The seqdsl extension: the .seq language (grammar and configuration come from
// package.json) and its language server, `seqdsl lsp` over stdio.
"use strict";

const vscode = require("vscode");
const { LanguageClient, TransportKind } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const path = vscode.workspace.getConfiguration("seqdsl").get("server.path", "seqdsl");
  const serverOptions = { command: path, args: ["lsp"], transport: TransportKind.stdio };
  const clientOptions = {
    documentSelector: [{ scheme: "file", language: "seq" }],
    synchronize: { fileEvents: vscode.workspace.createFileSystemWatcher("**/*.seq") },
  };
  client = new LanguageClient("seqdsl", "seqdsl language server", serverOptions, clientOptions);
  context.subscriptions.push(client);
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
